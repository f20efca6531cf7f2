// SparseConvDepthwise: a blocked 1x1 SparseConv and the blocked DepthwiseConv after it, run one
// band of output rows at a time (ops.h).  The two halves are the ops' own kernels; this file
// only cuts the image into bands and passes each band's expanded rows through a scratch.
#include <algorithm>
#include <climits>

#include "ort/ops.h"
#include "ort/work_split.h"

namespace skort {
namespace {
std::string s(int64_t v) { return std::to_string(v); }
enum : size_t { kFuX = 0, kFuResidual = 5, kFuDwW = 6 };
// Expanded rows per band, in bytes: the band and the output rows it feeds stay in L2 (Zen3:
// 512 KiB) beside the weights and the 1x1 conv's panel.
constexpr int64_t kBandBytes = 192 * 1024;
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
    : api_(api), pw_(api, info), dw_(api, info, kFuDwW, "dw_") {
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
  // one (the halo rows two bands share are expanded twice).
  const int64_t row_bytes = mb * L * W * int64_t(sizeof(float));
  const int64_t max_rows = std::max<int64_t>(1, kBandBytes / row_bytes);
  int64_t band_out = 1;
  for (int64_t lo, hi; band_out < OH; ++band_out) {
    dw_.band_rows(H, 0, band_out + 1, &lo, &hi);
    if (hi - lo > max_rows) break;
  }
  const int64_t bands = (OH + band_out - 1) / band_out;
  const size_t panel = pw_.pixel_panel_floats();
  const int64_t xs = kb * H * W * L, ys = mb * OH * OW * L;
  // items in (image, band) order: each CPU's range of them is a band of rows, as the 1x1 convs
  // around it split their pixels
  parallel_for_affine(api_, ctx, size_t(N * bands), [&](size_t i) {
    const int64_t n = int64_t(i) / bands, b = int64_t(i) % bands;
    const int64_t oy0 = b * band_out, oy1 = std::min(OH, oy0 + band_out);
    int64_t lo, hi;
    dw_.band_rows(H, oy0, oy1, &lo, &hi);
    const int64_t rows = hi - lo;
    Scratch<float> band{size_t(mb * L * std::max<int64_t>(rows, 1) * W)};
    if (rows > 0) {
      Scratch<float> pan{panel};
      pw_.blocked_pixels(x + n * xs, H * W, lo * W, rows * W, band.get(), rows * W * L,
                         pan.get());
    }
    dw_.blocked_band(band.get(), lo, rows, W, OH, OW, oy0, oy1, y + n * ys);
  });
}

}  // namespace skort
