// Reorder: NCHW <-> NCHWc8 (8-channel blocks), the op at each edge of a chain of blocked
// sparsekit ops (docs/format.md).  Also check_blocked_shape, the creation-time check every
// blocked op makes of its declared input shape.
#include <algorithm>
#include <climits>

#include "ort/ops.h"

namespace skort {
namespace {
std::string s(int64_t v) { return std::to_string(v); }
constexpr int64_t L = sk::kChannelBlock;
}  // namespace

void check_blocked_shape(const std::vector<int64_t>& d, int64_t channels, const char* what) {
  const int64_t nb = (channels + L - 1) / L;
  const bool ok = d.size() == 5 && (d[1] < 0 || d[1] == nb) && (d[4] < 0 || d[4] == L);
  if (!ok)
    throw Error(std::string(what) + " is declared with shape " + shape_str(d) +
                ", but layout NCHWc8 with " + s(channels) + " channels needs [N, " + s(nb) +
                ", H, W, 8]");
}

const std::vector<IoSpec>& ReorderKernel::inputs() {
  static const std::vector<IoSpec> v = {
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},  // X
  };
  return v;
}

ReorderKernel::ReorderKernel(const Api& api, const OrtKernelInfo* info) : api_(api) {
  Attrs a(api, info);
  refuse_unimplemented(a, {"to", "channels"});
  const std::string to = a.get_string("to");
  if (to != "NCHWc8" && to != "NCHW")
    throw Error("attribute 'to' must be \"NCHWc8\" or \"NCHW\", got \"" + to + "\"");
  to_blocked_ = to == "NCHWc8";
  if (a.has("channels") || !to_blocked_) {
    channels_ = a.get_int("channels");  // required for to = "NCHW": how many lanes are real
    if (channels_ < 1 || channels_ > INT32_MAX)
      throw Error("attribute 'channels' must be in [1, 2^31), got " + s(channels_));
  }
  std::vector<int64_t> xs;
  if (input_static_shape(api, info, 0, &xs)) {
    if (to_blocked_) {
      if (xs.size() != 4 || (channels_ > 0 && xs[1] >= 0 && xs[1] != channels_))
        throw Error("X is declared with shape " + shape_str(xs) +
                    ", but Reorder to NCHWc8 needs " +
                    (channels_ > 0 ? "[N, " + s(channels_) + ", H, W]" : std::string("[N, C, H, W]")));
    } else {
      check_blocked_shape(xs, channels_, "X");
    }
  }
}

void ReorderKernel::compute(OrtKernelContext* ctx) const {
  const TensorView X = view_tensor(api_, get_input(api_, ctx, 0), "X");
  if (X.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("X must be float32, got ") + dtype_name(X.type));
  const float* x = static_cast<const float*>(X.data);
  if (to_blocked_) {
    if (X.shape.size() != 4)
      throw Error("X must be 4-D [N, C, H, W] for Reorder to NCHWc8, got shape " + X.shape_str());
    const int64_t N = X.shape[0], C = X.shape[1], P = X.shape[2] * X.shape[3];
    if (channels_ > 0 && C != channels_)
      throw Error("X has shape " + X.shape_str() + " but attribute 'channels' is " + s(channels_));
    const int64_t nb = (C + L - 1) / L;
    float* y = get_output(api_, ctx, {N, nb, X.shape[2], X.shape[3], L});
    parallel_for(api_, ctx, size_t(N * nb), [&](size_t i) {
      const int64_t n = int64_t(i) / nb, b = int64_t(i) % nb;
      const int64_t lanes = std::min(L, C - b * L);
      const float* src = x + (n * C + b * L) * P;
      float* dst = y + int64_t(i) * P * L;
      for (int64_t p = 0; p < P; ++p) {
        for (int64_t l = 0; l < lanes; ++l) dst[p * L + l] = src[l * P + p];
        for (int64_t l = lanes; l < L; ++l) dst[p * L + l] = 0.0f;
      }
    });
    return;
  }
  const int64_t nb = (channels_ + L - 1) / L;
  if (X.shape.size() != 5 || X.shape[1] != nb || X.shape[4] != L)
    throw Error("X has shape " + X.shape_str() + " but Reorder to NCHW of " + s(channels_) +
                " channels needs [N, " + s(nb) + ", H, W, 8]");
  const int64_t N = X.shape[0], C = channels_, P = X.shape[2] * X.shape[3];
  float* y = get_output(api_, ctx, {N, C, X.shape[2], X.shape[3]});
  parallel_for(api_, ctx, size_t(N * nb), [&](size_t i) {
    const int64_t n = int64_t(i) / nb, b = int64_t(i) % nb;
    const int64_t lanes = std::min(L, C - b * L);
    const float* src = x + int64_t(i) * P * L;
    float* dst = y + (n * C + b * L) * P;
    for (int64_t l = 0; l < lanes; ++l)
      for (int64_t p = 0; p < P; ++p) dst[l * P + p] = src[p * L + l];
  });
}

}  // namespace skort
