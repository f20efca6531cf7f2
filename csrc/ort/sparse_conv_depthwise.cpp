// SparseConvDepthwise: a blocked 1x1 SparseConv and the blocked DepthwiseConv after it, run one
// band of output rows at a time (ops.h).  The two halves are the ops' own kernels; this file
// only cuts the image into bands and passes each band's expanded rows through a scratch.
#include <algorithm>
#include <climits>
#include <cstring>
#include <utility>

#include "ort/ops.h"
#include "ort/work_split.h"

namespace skort {
namespace {
std::string s(int64_t v) { return std::to_string(v); }
enum : size_t { kFuX = 0, kFuResidual = 5, kFuDwW = 6 };
// Expanded rows per band, in bytes: the band and the output rows it feeds stay in L2 (Zen3:
// 512 KiB) beside the weights and the 1x1 conv's panel.
constexpr int64_t kBandBytes = 192 * 1024;

// Each half is built by its own op's constructor (the same checks); its errors say which half.
template <class K, class... Args>
K half(const char* which, Args&&... args) {
  try {
    return K(std::forward<Args>(args)...);
  } catch (const Error& e) {
    throw Error(std::string(which) + ": " + e.what(), e.code());
  }
}
}  // namespace

const std::vector<IoSpec>& SparseConvDepthwiseKernel::inputs() {
  static const std::vector<IoSpec> v = [] {
    std::vector<IoSpec> in = SparseConvKernel::inputs();
    in.push_back({ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED});  // dw W
    in.push_back({ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_OPTIONAL});  // dw bias
    return in;
  }();
  return v;
}

SparseConvDepthwiseKernel::SparseConvDepthwiseKernel(const Api& api, const OrtKernelInfo* info)
    : api_(api),
      pw_(half<SparseConvKernel>("the 1x1 conv (inputs 0-5)", api, info)),
      dw_(half<DepthwiseConvKernel>("the depthwise conv (inputs 6-7, attributes dw_*)", api, info,
                                    size_t(kFuDwW), "dw_")) {
  if (!pw_.blocked_in_out() || !dw_.blocked())
    throw Error("layout and dw_layout must both be \"NCHWc8\" (the op runs on channel blocks)");
  if (input_present(api, info, kFuResidual))
    throw Error("the 1x1 conv takes no residual here (its output feeds the depthwise conv only)");
  if (dw_.channels() != pw_.out_channels())
    throw Error("the depthwise conv has " + s(dw_.channels()) + " channels but the 1x1 conv " +
                "makes " + s(pw_.out_channels()));
}

void SparseConvDepthwiseKernel::compute(OrtKernelContext* ctx) const {
  constexpr int64_t L = sk::kChannelBlock;
  const int64_t kb = (pw_.in_channels() + L - 1) / L, mb = (pw_.out_channels() + L - 1) / L;
  const TensorView X = view_tensor(api_, get_input(api_, ctx, kFuX), "X");
  if (X.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("X must be float32, got ") + dtype_name(X.type));
  if (X.shape.size() != 5 || X.shape[1] != kb || X.shape[4] != L)
    throw Error("X has shape " + X.shape_str() + " but layout NCHWc8 with " +
                s(pw_.in_channels()) + " in_channels needs [N, " + s(kb) + ", H, W, 8]");
  const int64_t N = X.shape[0], H = X.shape[2], W = X.shape[3];
  int64_t OH, OW;
  dw_.out_plane(H, W, &OH, &OW);
  if (H * W > INT32_MAX / L || H > INT32_MAX / 2)  // the band's pad (pad_t + first row) an int
    throw Error("X spatial size " + s(H) + "x" + s(W) + " is too large");
  float* y = get_output(api_, ctx, {N, mb, OH, OW, L});
  if (N == 0) return;
  const float* x = static_cast<const float*>(X.data);
  // Output rows per band: as many as keep the band's expanded rows within kBandBytes, at least
  // one.  A work item is a run of consecutive bands of one image (a few per CPU); each band
  // keeps the rows it shares with the one before (k - stride of them) and expands only the
  // new ones, so no row is expanded twice inside a run.
  const int64_t row_bytes = mb * L * W * int64_t(sizeof(float));
  const int64_t max_rows = std::max<int64_t>(1, kBandBytes / row_bytes);
  int64_t band_out = 1, cap = 1;  // cap: the most input rows any band holds
  for (int64_t lo, hi; band_out < OH; ++band_out) {
    dw_.band_rows(H, 0, band_out + 1, &lo, &hi);
    if (hi - lo > max_rows) break;
  }
  for (int64_t oy = 0, lo, hi; oy < OH; oy += band_out) {
    dw_.band_rows(H, oy, std::min(OH, oy + band_out), &lo, &hi);
    cap = std::max(cap, hi - lo);
  }
  const int64_t bands = (OH + band_out - 1) / band_out;
  const int64_t runs = std::min<int64_t>(bands, std::max(1, 2 * cpu_count()));
  const size_t panel = pw_.pixel_panel_floats();
  const int64_t xs = kb * H * W * L, ys = mb * OH * OW * L, bs = cap * W * L;
  // items in (image, run) order: each CPU's range of them is a band of rows, as the 1x1 convs
  // around it split their pixels
  parallel_for_affine(api_, ctx, size_t(N * runs), [&](size_t i) {
    const int64_t n = int64_t(i) / runs, r = int64_t(i) % runs;
    // the band buffer: mb blocks of cap rows (block stride bs), rows past a band's own zero
    // where they stand for the padding below the image
    Scratch<float> band{size_t(mb * bs)};
    Scratch<float> pan{panel};
    float* buf = band.get();
    int64_t prev_lo = 0, prev_hi = 0;
    for (int64_t b = bands * r / runs; b < bands * (r + 1) / runs; ++b) {
      const int64_t oy0 = b * band_out, oy1 = std::min(OH, oy0 + band_out);
      int64_t lo, hi;
      dw_.band_rows(H, oy0, oy1, &lo, &hi);
      int64_t keep = 0;
      if (prev_hi > lo && prev_lo <= lo) {  // rows [lo, prev_hi) are in the buffer already
        keep = prev_hi - lo;
        for (int64_t blk = 0; blk < mb; ++blk)
          std::memmove(buf + blk * bs, buf + blk * bs + (lo - prev_lo) * W * L,
                       size_t(keep * W * L) * sizeof(float));
      }
      if (hi > lo + keep)
        pw_.blocked_pixels(x + n * xs, H * W, (lo + keep) * W, (hi - lo - keep) * W,
                           buf + keep * W * L, bs, pan.get());
      if (hi - lo < cap)  // rows below the band: zero, the padding they stand for
        for (int64_t blk = 0; blk < mb; ++blk)
          std::memset(buf + blk * bs + (hi - lo) * W * L, 0,
                      size_t((cap - (hi - lo)) * W * L) * sizeof(float));
      dw_.blocked_band(buf, lo, cap, W, OH, OW, oy0, oy1, y + n * ys);
      prev_lo = lo, prev_hi = hi;
    }
  });
}

}  // namespace skort
