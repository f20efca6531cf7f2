// DepthwiseConv: depthwise convolution (group = C) with a dense constant weight, on NCHW
// tensors or (layout = "NCHWc8") on 8-channel blocks [N, ceil(C/8), H, W, 8].
#include <algorithm>
#include <climits>

#include "ort/ops.h"
#include "ort/work_split.h"

namespace skort {
namespace {
std::string s(int64_t v) { return std::to_string(v); }
enum : size_t { kDwX = 0, kDwW = 1, kDwBias = 2 };
// Planes up to this many pixels go through dwconv_multi (measured on AVX-512, 3x3: 1024x7x7
// 0.126 -> 0.046 ms, 512x14x14 s2 0.096 -> 0.033, 256x28x28 0.168 -> 0.146, 56x56 unchanged).
constexpr int64_t kSmallPlane = 1024;
}  // namespace

const std::vector<IoSpec>& DepthwiseConvKernel::inputs() {
  static const std::vector<IoSpec> v = {
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},  // X
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},  // W [C, 1, k, k]
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_OPTIONAL},  // bias [C]
  };
  return v;
}

DepthwiseConvKernel::DepthwiseConvKernel(const Api& api, const OrtKernelInfo* info,
                                         size_t w_index, const char* attr_prefix)
    : api_(api) {
  Attrs a(api, info, attr_prefix);
  refuse_unimplemented(a, {"kernel_shape", "strides", "pads", "dilations", "activation",
                           "clip_min", "clip_max", "group", "layout"});
  const std::string layout = a.get_string("layout", "NCHW");
  if (layout != "NCHW" && layout != "NCHWc8")
    throw Error("attribute 'layout' must be \"NCHW\" or \"NCHWc8\", got \"" + layout + "\"");
  blocked_ = layout == "NCHWc8";
  kt_ = select_table();
  const bool own_x = w_index == kDwW;  // else the X is SparseConvDepthwise's 1x1 output
  const TensorView W = constant_input(api, info, w_index, "W");
  if (W.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("W must be float32, got ") + dtype_name(W.type));
  if (W.shape.size() != 4 || W.shape[1] != 1 || W.shape[0] < 1)
    throw Error("W has shape " + W.shape_str() + ", expected [C, 1, k, k]");
  if (W.shape[2] != W.shape[3])
    throw Error("W has shape " + W.shape_str() + ": only square kernels are supported");
  C_ = W.shape[0];
  k_ = W.shape[2];
  if (k_ < 1 || k_ > 1024 || C_ > INT32_MAX)
    throw Error("W has shape " + W.shape_str() + ", which is out of the supported range");
  if (a.present("group") && a.get_int("group") != C_)
    throw Error("attribute 'group' = " + s(a.get_int("group")) + " must equal the channel count " +
                s(C_) + " (DepthwiseConv is depthwise)");
  if (a.has("kernel_shape")) {
    const auto ks = conv_pair_attr(a, "kernel_shape", {}, 1);
    if (ks[0] != k_ || ks[1] != k_)
      throw Error("attribute 'kernel_shape' " + shape_str(ks) + " does not match W's shape " +
                  W.shape_str());
  }
  const auto st = conv_pair_attr(a, "strides", {1, 1}, 1);
  if (st[0] != st[1])
    throw Error("attribute 'strides' must be equal along H and W, got " + shape_str(st));
  stride_ = st[0];
  const auto dl = conv_pair_attr(a, "dilations", {1, 1}, 1);
  if (dl[0] != 1 || dl[1] != 1)
    throw Error("attribute 'dilations' must be [1, 1] for DepthwiseConv, got " + shape_str(dl));
  const auto pd = conv_pads_attr(a);
  conv_check_geometry({k_, k_}, st, dl, pd);
  pt_ = pd[0], pl_ = pd[1], pb_ = pd[2], pr_ = pd[3];
  act_ = read_activation(a);
  const float* wp = static_cast<const float*>(W.data);
  require_finite(wp, size_t(C_ * k_ * k_), "W");
  w_.assign(wp, wp + C_ * k_ * k_);
  bias_ = read_bias(api, info, w_index + (kDwBias - kDwW), C_, "W.shape[0] = channels");
  if (bias_.empty()) bias_.assign(size_t(C_), 0.0f);
  if (blocked_) {
    // A blocked X must say so in its declared shape: a model whose blocked tensors disagree
    // with their declared shapes fails here, not at run time.
    std::vector<int64_t> xs;
    if (own_x && input_static_shape(api, info, kDwX, &xs)) check_blocked_shape(xs, C_, "X");
    // weights [blocks][k*k][8] and bias [blocks][8], zero past C (the kernels' layout)
    constexpr int64_t L = sk::kChannelBlock;
    const int64_t nb = (C_ + L - 1) / L, kk = k_ * k_;
    AVec<float> wb(size_t(nb * kk * L), 0.0f), bb(size_t(nb * L), 0.0f);
    for (int64_t c = 0; c < C_; ++c) {
      bb[size_t(c)] = bias_[size_t(c)];  // [c / L][c % L] is element c
      for (int64_t t = 0; t < kk; ++t)
        wb[size_t(((c / L) * kk + t) * L + c % L)] = w_[size_t(c * kk + t)];
    }
    w_.swap(wb);
    bias_.swap(bb);
  }
  log_verbose(api, info,
              std::string("sparsekit DepthwiseConv '") + node_name(api, info) + "': kernels " +
                  kt_->name + ", C=" + s(C_) + " k=" + s(k_) + " stride=" + s(stride_) +
                  " layout=" + layout);
}

void DepthwiseConvKernel::compute(OrtKernelContext* ctx) const {
  if (blocked_) return compute_blocked(ctx);
  const TensorView X = view_tensor(api_, get_input(api_, ctx, kDwX), "X");
  if (X.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("X must be float32, got ") + dtype_name(X.type));
  if (X.shape.size() != 4)
    throw Error("X must be 4-D [N, C, H, W], got shape " + X.shape_str());
  if (X.shape[1] != C_)
    throw Error("X has shape " + X.shape_str() + " but W has " + s(C_) + " channels");
  const int64_t N = X.shape[0], H = X.shape[2], W = X.shape[3];
  const int64_t OH = conv_out_size(H, k_, stride_, 1, pt_, pb_);
  const int64_t OW = conv_out_size(W, k_, stride_, 1, pl_, pr_);
  if (OH < 1 || OW < 1)
    throw Error("X spatial size " + s(H) + "x" + s(W) + " (padded) is smaller than the kernel " +
                s(k_) + "x" + s(k_));
  if (H > INT32_MAX || W > INT32_MAX || OH > INT32_MAX || OW > INT32_MAX)
    throw Error("X spatial size " + s(H) + "x" + s(W) + " is too large");
  float* y = get_output(api_, ctx, {N, C_, OH, OW});
  if (N == 0) return;
  const float* x = static_cast<const float*>(X.data);
  sk::DwShape sh;
  sh.H = int(H), sh.W = int(W), sh.OH = int(OH), sh.OW = int(OW);
  sh.k = int(k_), sh.stride = int(stride_), sh.pad_t = int(pt_), sh.pad_l = int(pl_);
  const sk::DwConvFn dw = kt_->dwconv;
  const int64_t C = C_, kk = k_ * k_;
  const int64_t L = kt_->dw_multi_lanes;
  if (L > 1 && H * W <= kSmallPlane) {
    // Small planes, vectorised over channels: at most 8 calls per image, each over a run of
    // whole channel groups.  Each call sets up its padded tile and index tables once; one call
    // per group of L channels cost 0.096 ms for 512x14x14 against 0.061 in one call (AVX2).
    const int64_t per = (C + 8 * L - 1) / (8 * L) * L;  // channels per call, a multiple of L
    const int64_t chunks = (C + per - 1) / per;
    parallel_for(api_, ctx, size_t(N * chunks), [&](size_t i) {
      const int64_t n = int64_t(i) / chunks, c0 = int64_t(i) % chunks * per;
      const int64_t nc = std::min(per, C - c0);
      kt_->dwconv_multi(sh, int(nc), x + (n * C + c0) * H * W, w_.data() + c0 * kk,
                        bias_.data() + c0, act_.lo, act_.hi, y + (n * C + c0) * OH * OW);
    });
    return;
  }
  parallel_for(api_, ctx, size_t(N * C), [&](size_t i) {
    const int64_t c = int64_t(i) % C;
    dw(sh, x + int64_t(i) * H * W, w_.data() + c * kk, bias_[size_t(c)], act_.lo, act_.hi,
       y + int64_t(i) * OH * OW);
  });
}

void DepthwiseConvKernel::out_plane(int64_t H, int64_t W, int64_t* OH, int64_t* OW) const {
  *OH = conv_out_size(H, k_, stride_, 1, pt_, pb_);
  *OW = conv_out_size(W, k_, stride_, 1, pl_, pr_);
  if (*OH < 1 || *OW < 1)
    throw Error("X spatial size " + s(H) + "x" + s(W) + " (padded) is smaller than the kernel " +
                s(k_) + "x" + s(k_));
  if (H > INT32_MAX || W > INT32_MAX || *OH > INT32_MAX || *OW > INT32_MAX)
    throw Error("X spatial size " + s(H) + "x" + s(W) + " is too large");
}

void DepthwiseConvKernel::band_rows(int64_t H, int64_t oy0, int64_t oy1, int64_t* lo,
                                    int64_t* hi) const {
  *lo = std::max<int64_t>(0, oy0 * stride_ - pt_);
  *hi = std::min<int64_t>(H, (oy1 - 1) * stride_ - pt_ + k_);
  if (*hi < *lo) *hi = *lo;  // rows of padding only
}

// The band's rows as a plane of their own: output row oy reads band row oy*s - (pad_t + lo) +
// ky, and rows outside the band are exactly the image's padding (band_rows keeps every row an
// output in [oy0, oy1) reads), so the kernel's zero rows are right.  The output keeps the
// image's geometry: block stride OH*OW*8, only rows [oy0, oy1) written.
void DepthwiseConvKernel::blocked_band(const float* band, int64_t lo, int64_t rows, int64_t W,
                                       int64_t OH, int64_t OW, int64_t oy0, int64_t oy1,
                                       float* y) const {
  constexpr int64_t L = sk::kChannelBlock;
  sk::DwShape sh;
  sh.H = int(rows), sh.W = int(W), sh.OH = int(OH), sh.OW = int(OW);
  sh.k = int(k_), sh.stride = int(stride_), sh.pad_t = int(pt_ + lo), sh.pad_l = int(pl_);
  const int64_t nb = (C_ + L - 1) / L;
  kt_->dwconv_blocked(sh, int(nb), band, w_.data(), bias_.data(), act_.lo, act_.hi, y, int(oy0),
                      int(oy1));
}

// Layout NCHWc8: X [N, B, H, W, 8] with B = ceil(C/8).  Work items are runs of blocks (up to 4,
// so the kernel can pair blocks on narrow planes) times bands of output rows, at least 8 items
// per call when the tensor allows, so 2 threads get even shares of a plane with few blocks.
void DepthwiseConvKernel::compute_blocked(OrtKernelContext* ctx) const {
  constexpr int64_t L = sk::kChannelBlock;
  const int64_t nb = (C_ + L - 1) / L;
  const TensorView X = view_tensor(api_, get_input(api_, ctx, kDwX), "X");
  if (X.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("X must be float32, got ") + dtype_name(X.type));
  if (X.shape.size() != 5 || X.shape[1] != nb || X.shape[4] != L)
    throw Error("X has shape " + X.shape_str() + " but layout NCHWc8 with " + s(C_) +
                " channels needs [N, " + s(nb) + ", H, W, 8]");
  const int64_t N = X.shape[0], H = X.shape[2], W = X.shape[3];
  int64_t OH, OW;
  out_plane(H, W, &OH, &OW);
  float* y = get_output(api_, ctx, {N, nb, OH, OW, L});
  if (N == 0) return;
  const float* x = static_cast<const float*>(X.data);
  sk::DwShape sh;
  sh.H = int(H), sh.W = int(W), sh.OH = int(OH), sh.OW = int(OW);
  sh.k = int(k_), sh.stride = int(stride_), sh.pad_t = int(pt_), sh.pad_l = int(pl_);
  const int64_t per = std::min<int64_t>(nb, 4);  // blocks per item
  const int64_t runs = (nb + per - 1) / per;
  int64_t bands = (8 + N * runs - 1) / (N * runs);
  // A large plane of one image: at least a band of rows per CPU (of 8 rows or more), so that a
  // CPU's items (below) read the rows the 1x1 conv before wrote on that CPU (its pixel ranges)
  // and write those the one after reads.  Small planes and thin bands cost more in re-read
  // halo rows than they save (14x14 and 7x7 planes in two bands were slower).
  if (N == 1 && OH * OW > kSmallPixels)
    bands = std::max<int64_t>(bands, std::min<int64_t>(cpu_count(), OH / 8));
  bands = std::max<int64_t>(1, std::min(bands, OH));
  const int64_t in = H * W * L, out = OH * OW * L, wk = k_ * k_ * L;
  // items in (image, band, run) order: each CPU's range of them is a band of rows
  parallel_for_affine(api_, ctx, size_t(N * runs * bands), [&](size_t i) {
    const int64_t run = int64_t(i) % runs, band = int64_t(i) / runs % bands;
    const int64_t n = int64_t(i) / runs / bands, b0 = run * per;
    const int64_t nblk = std::min(per, nb - b0);
    const int oy0 = int(OH * band / bands), oy1 = int(OH * (band + 1) / bands);
    const int64_t off = n * nb + b0;
    kt_->dwconv_blocked(sh, int(nblk), x + off * in, w_.data() + b0 * wk, bias_.data() + b0 * L,
                        act_.lo, act_.hi, y + off * out, oy0, oy1);
  });
}

}  // namespace skort
