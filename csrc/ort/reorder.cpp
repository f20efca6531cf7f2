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
// Pixels per work item: whole planes when there are blocks enough for 8 items, else planes cut
// into multiples of 8 pixels (the kernels' transposes) so 2 threads share a few large blocks.
int64_t pixel_chunk(int64_t blocks, int64_t P) {
  if (blocks >= 8 || P <= 64) return std::max<int64_t>(P, 1);
  const int64_t parts = (8 + blocks - 1) / blocks;
  const int64_t c = ((P + parts - 1) / parts + 7) / 8 * 8;
  return std::max<int64_t>(c, 64);
}
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
  kt_ = select_table();
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
    const int64_t chunk = pixel_chunk(N * nb, P);
    const int64_t chunks = (P + chunk - 1) / chunk;
    parallel_for(api_, ctx, size_t(N * nb * chunks), [&](size_t i) {
      const int64_t q = int64_t(i) % chunks, nbk = int64_t(i) / chunks;
      const int64_t n = nbk / nb, b = nbk % nb, p0 = q * chunk;
      const int lanes = int(std::min(L, C - b * L));
      kt_->to_blocked(x + (n * C + b * L) * P + p0, P, lanes, size_t(std::min(chunk, P - p0)),
                      y + (nbk * P + p0) * L);
    });
    return;
  }
  const int64_t nb = (channels_ + L - 1) / L;
  if (X.shape.size() != 5 || X.shape[1] != nb || X.shape[4] != L)
    throw Error("X has shape " + X.shape_str() + " but Reorder to NCHW of " + s(channels_) +
                " channels needs [N, " + s(nb) + ", H, W, 8]");
  const int64_t N = X.shape[0], C = channels_, P = X.shape[2] * X.shape[3];
  float* y = get_output(api_, ctx, {N, C, X.shape[2], X.shape[3]});
  const int64_t chunk = pixel_chunk(N * nb, P);
  const int64_t chunks = (P + chunk - 1) / chunk;
  parallel_for(api_, ctx, size_t(N * nb * chunks), [&](size_t i) {
    const int64_t q = int64_t(i) % chunks, nbk = int64_t(i) / chunks;
    const int64_t n = nbk / nb, b = nbk % nb, p0 = q * chunk;
    const int lanes = int(std::min(L, C - b * L));
    kt_->from_blocked(x + (nbk * P + p0) * L, lanes, size_t(std::min(chunk, P - p0)),
                      y + (n * C + b * L) * P + p0, P);
  });
}

}  // namespace skort
