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

// Units (one block's pixel chunk, `floats` each) grouped into items of at least this many
// floats: a small tensor (MobileNetV2's last 1280 x 7 x 7, 160 one-block units of 392 floats)
// split per unit cost more in the pool's hand-offs than the copy (2 threads: 9.8 us, 1 thread
// 7 us); in items of 32 KiB it is a few items or one.
constexpr int64_t kItemFloats = 8192;

// f(unit) for every unit, on the session's pool, in items of whole units.
template <typename F>
void for_units(const Api& api, OrtKernelContext* ctx, int64_t units, int64_t floats, F&& f) {
  const int64_t per = std::max<int64_t>(1, kItemFloats / std::max<int64_t>(1, floats));
  parallel_for(api, ctx, size_t((units + per - 1) / per), [&](size_t i) {
    const int64_t u1 = std::min(units, (int64_t(i) + 1) * per);
    for (int64_t u = int64_t(i) * per; u < u1; ++u) f(u);
  });
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
  refuse_unimplemented(a, {"to", "channels", "pool"});
  kt_ = select_table();
  const std::string to = a.get_string("to");
  if (to != "NCHWc8" && to != "NCHW")
    throw Error("attribute 'to' must be \"NCHWc8\" or \"NCHW\", got \"" + to + "\"");
  to_blocked_ = to == "NCHWc8";
  if (a.has("pool")) {
    const std::string pool = a.get_string("pool");
    if (pool != "none" && pool != "global_average")
      throw Error("attribute 'pool' must be \"none\" or \"global_average\", got \"" + pool + "\"");
    pool_ = pool == "global_average";
    if (pool_ && to_blocked_)
      throw Error("attribute 'pool' = \"global_average\" needs to = \"NCHW\"");
  }
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
    for_units(api_, ctx, N * nb * chunks, chunk * L, [&](int64_t i) {
      const int64_t q = i % chunks, nbk = i / chunks;
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
  if (pool_) return global_average(ctx, x, N, C, P);
  float* y = get_output(api_, ctx, {N, C, X.shape[2], X.shape[3]});
  const int64_t chunk = pixel_chunk(N * nb, P);
  const int64_t chunks = (P + chunk - 1) / chunk;
  for_units(api_, ctx, N * nb * chunks, chunk * L, [&](int64_t i) {
    const int64_t q = i % chunks, nbk = i / chunks;
    const int64_t n = nbk / nb, b = nbk % nb, p0 = q * chunk;
    const int lanes = int(std::min(L, C - b * L));
    kt_->from_blocked(x + (nbk * P + p0) * L, lanes, size_t(std::min(chunk, P - p0)),
                      y + (n * C + b * L) * P + p0, P);
  });
}

// pool = "global_average": Y[n, c, 0, 0] = the mean of channel c over the plane, read straight
// from the blocks (what onnxruntime's GlobalAveragePool computes after a Reorder to NCHW,
// without writing the NCHW tensor).  Per block, float sums over 4 interleaved pixel streams
// (independent add chains; 8 lanes each vectorise), folded into double every kSpan pixels so a
// large plane keeps float's precision.
void ReorderKernel::global_average(OrtKernelContext* ctx, const float* x, int64_t N, int64_t C,
                                   int64_t P) const {
  const int64_t nb = (C + L - 1) / L;
  float* y = get_output(api_, ctx, {N, C, 1, 1});
  constexpr int64_t kSpan = 256;
  for_units(api_, ctx, N * nb, P * L, [&](int64_t nbk) {
    const int64_t n = nbk / nb, b = nbk % nb;
    const float* xb = x + nbk * P * L;
    double total[L] = {};
    for (int64_t p0 = 0; p0 < P; p0 += kSpan) {
      const int64_t p1 = std::min(P, p0 + kSpan);
      float acc[4][L] = {};
      int64_t p = p0;
      for (; p + 4 <= p1; p += 4)
        for (int k = 0; k < 4; ++k)
          for (int l = 0; l < L; ++l) acc[k][l] += xb[(p + k) * L + l];
      for (; p < p1; ++p)
        for (int l = 0; l < L; ++l) acc[0][l] += xb[p * L + l];
      for (int l = 0; l < L; ++l)
        total[l] += double((acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]));
    }
    const int lanes = int(std::min(L, C - b * L));
    for (int l = 0; l < lanes; ++l) y[n * C + b * L + l] = float(total[l] / double(P));
  });
}

}  // namespace skort
