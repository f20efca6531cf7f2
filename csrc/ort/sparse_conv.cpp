// SparseConv: Y = act(conv2d(X, W) + bias [+ residual]) for NCHW float32, group 1.
#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "ort/ops.h"

namespace skort {
namespace {

std::string s(int64_t v) { return std::to_string(v); }

// Phase-plane path limits: reductions up to this long (stems: 3*3*3, 3*7*7) and output rows at
// least one register tile wide.
constexpr int64_t kPhaseMaxK = 256;
constexpr int64_t kPhaseMinWidth = 24;
constexpr int64_t kBL = sk::kChannelBlock;  // channels per block of layout NCHWc8
constexpr int64_t kPhaseMaxBand = 8;  // output rows per band (its planes stay in L2)

// Geometry attributes are bounded so that no index arithmetic below can overflow.
constexpr int64_t kMaxGeom = 1 << 20;

std::vector<int64_t> pair_attr(const Attrs& a, const char* name, std::vector<int64_t> def,
                               int64_t min) {
  std::vector<int64_t> v = def.empty() ? a.get_ints(name) : a.get_ints(name, def);
  if (v.size() != 2)
    throw Error(std::string("attribute '") + name + "' must have 2 values, got " + shape_str(v));
  for (int64_t x : v)
    if (x < min || x > kMaxGeom)
      throw Error(std::string("attribute '") + name + "' values must be in [" + s(min) + ", " +
                  s(kMaxGeom) + "], got " + shape_str(v));
  return v;
}

std::vector<int64_t> pads_attr(const Attrs& a) {
  std::vector<int64_t> p = a.get_ints("pads", {0, 0, 0, 0});
  if (p.size() != 4)
    throw Error("attribute 'pads' must have 4 values [top, left, bottom, right], got " +
                shape_str(p));
  for (int64_t x : p)
    if (x < 0 || x > kMaxGeom)
      throw Error("attribute 'pads' values must be in [0, " + s(kMaxGeom) + "], got " +
                  shape_str(p));
  return p;
}

// Output size along one axis, or -1 when the (padded) input is smaller than the dilated kernel.
int64_t out_size(int64_t in, int64_t k, int64_t stride, int64_t dil, int64_t p0, int64_t p1) {
  const int64_t span = in + p0 + p1 - (dil * (k - 1) + 1);
  return span < 0 ? -1 : span / stride + 1;
}

}  // namespace

void conv_check_geometry(const std::vector<int64_t>& ks, const std::vector<int64_t>& st,
                         const std::vector<int64_t>& dl, const std::vector<int64_t>& pd) {
  for (size_t i = 0; i < 2; ++i) {
    if (st[i] > kMaxStride || dl[i] > kMaxStride)
      throw Error("attributes 'strides' " + shape_str(st) + " and 'dilations' " + shape_str(dl) +
                  " must be in [1, " + s(kMaxStride) + "]");
    const int64_t extent = dl[i] * (ks[i] - 1) + 1;  // <= 2^32
    if (extent > kMaxGeom)
      throw Error("the dilated kernel extent " + s(extent) + " (dilation " + s(dl[i]) +
                  ", kernel " + s(ks[i]) + ") exceeds " + s(kMaxGeom));
    // A pad as wide as the dilated kernel only adds outputs that never see the input (issue
    // 21: pads of 2^20 on a 1x1 conv made one run allocate 7.2 GB): each pad < the extent.
    if (pd[i] >= extent || pd[i + 2] >= extent)
      throw Error("attribute 'pads' " + shape_str(pd) + " must be smaller than the dilated " +
                  "kernel extent along each axis (" + s(dl[0] * (ks[0] - 1) + 1) + "x" +
                  s(dl[1] * (ks[1] - 1) + 1) + ")");
  }
}

std::vector<int64_t> conv_pair_attr(const Attrs& a, const char* name, std::vector<int64_t> def,
                                    int64_t min) {
  return pair_attr(a, name, std::move(def), min);
}
std::vector<int64_t> conv_pads_attr(const Attrs& a) { return pads_attr(a); }
int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t dil, int64_t p0,
                      int64_t p1) {
  return out_size(in, k, stride, dil, p0, p1);
}

const std::vector<IoSpec>& SparseConvKernel::inputs() {
  static const std::vector<IoSpec> v = {
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},      // X
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},      // values
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED, INPUT_OUTPUT_REQUIRED},  // indices (int32/u16/u8)
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, INPUT_OUTPUT_OPTIONAL},      // group_ptr
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_OPTIONAL},      // bias
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_OPTIONAL},      // residual
  };
  return v;
}

SparseConvKernel::SparseConvKernel(const Api& api, const OrtKernelInfo* info) : api_(api) {
  Attrs a(api, info);
  refuse_unimplemented(a, {"format", "block", "bank_size", "activation", "clip_min", "clip_max",
                           "residual_after_act", "out_channels", "in_channels", "kernel_shape",
                           "strides", "pads", "dilations", "layout", "input_layout"});
  const std::string layout = a.get_string("layout", "NCHW");
  if (layout != "NCHW" && layout != "NCHWc8")
    throw Error("attribute 'layout' must be \"NCHW\" or \"NCHWc8\", got \"" + layout + "\"");
  const std::string in_layout = a.get_string("input_layout", layout);
  if (in_layout != "NCHW" && in_layout != "NCHWc8")
    throw Error("attribute 'input_layout' must be \"NCHW\" or \"NCHWc8\", got \"" + in_layout +
                "\"");
  if (in_layout == "NCHWc8" && layout == "NCHW")
    throw Error("input_layout NCHWc8 needs layout NCHWc8 (a blocked X gives a blocked Y)");
  blocked_ = layout == "NCHWc8" && in_layout == "NCHWc8";
  blocked_out_ = layout == "NCHWc8" && in_layout == "NCHW";
  kt_ = select_table();
  M_ = a.get_int("out_channels");
  C_ = a.get_int("in_channels");
  if (M_ < 1 || M_ > INT32_MAX - 4)
    throw Error("attribute 'out_channels' must be >= 1, got " + s(M_));
  if (C_ < 1 || C_ > INT32_MAX) throw Error("attribute 'in_channels' must be >= 1, got " + s(C_));
  const auto ks = pair_attr(a, "kernel_shape", {}, 1);
  const auto st = pair_attr(a, "strides", {1, 1}, 1);
  const auto dl = pair_attr(a, "dilations", {1, 1}, 1);
  const auto pd = pads_attr(a);
  conv_check_geometry(ks, st, dl, pd);
  kh_ = ks[0], kw_ = ks[1], sh_ = st[0], sw_ = st[1], dh_ = dl[0], dw_ = dl[1];
  pt_ = pd[0], pl_ = pd[1], pb_ = pd[2], pr_ = pd[3];
  act_ = read_activation(a);
  const int64_t raa = a.get_int("residual_after_act", 0);
  if (raa != 0 && raa != 1)
    throw Error("attribute 'residual_after_act' must be 0 or 1, got " + s(raa));
  residual_after_act_ = raa == 1;
  if (residual_after_act_ && !input_present(api, info, kInResidual))
    throw Error("residual_after_act = 1 needs a residual input (input 5)");

  const int64_t taps = kh_ * kw_;  // <= 2^40
  if (taps > INT32_MAX || C_ > INT32_MAX / taps)
    throw Error("K = in_channels*kh*kw = " + s(C_) + "*" + s(kh_) + "*" + s(kw_) +
                " is too large");
  const int64_t K = C_ * taps;
  w_ = read_sparse_weights(api, info, a, M_, "out_channels", K,
                           "in_channels*kh*kw = " + s(C_) + "*" + s(kh_) + "*" + s(kw_));
  bias_ = read_bias(api, info, kInBias, M_, "out_channels");

  direct_ = kh_ == 1 && kw_ == 1 && sh_ == 1 && sw_ == 1 && pt_ == 0 && pl_ == 0 && pb_ == 0 &&
            pr_ == 0;
  panel_ = make_panel(w_, kt_);
  for (int32_t k : panel_.rows) {
    const int64_t c = k / taps, t = k % taps, ky = t / kw_, kx = t % kw_;
    tap_c_.push_back(int32_t(c));
    tap_dy_.push_back(int32_t(ky * dh_ - pt_));
    tap_dx_.push_back(int32_t(kx * dw_ - pl_));
  }
  phases_ = !direct_ && sh_ == sw_ && (sh_ == 1 || sh_ == 2) && dh_ == 1 && dw_ == 1 &&
            K <= kPhaseMaxK;
  std::vector<int64_t> xs;
  if (direct_ && input_static_shape(api, info, kInX, &xs) && xs.size() == 4 && xs[2] > 0 &&
      xs[3] > 0 && xs[2] * xs[3] <= INT32_MAX / C_) {
    static_hw_ = xs[2] * xs[3];
    static_xoff_.resize(w_.k.size());
    direct_offsets(w_, static_hw_, static_xoff_.data());
  }
  if (blocked_) init_blocked(api, info);
  if (blocked_out_) init_blocked_out(api, info);
  if (blocked_ || blocked_out_) init_dense();
  // K chunks for the im2col path only: on the direct path (X rows an image plane apart) they
  // measured slower on MobileNetV1's 1x1 layers (e.g. 512x14x14 0.33 -> 0.39 ms at 90% bank).
  if (!residual_after_act_ && !direct_ && !blocked_out_) kchunks_ = make_panel_kchunks(w_, panel_, kt_);
  log_verbose(api, info,
              std::string("sparsekit SparseConv '") + node_name(api, info) + "': kernels " +
                  kt_->name + ", " +
                  (dense_ ? std::string(blocked_ ? "NCHWc8 1x1" : "NCHW -> NCHWc8") +
                                " dense (" + s(int64_t(panel_.rows.size())) + " taps)"
                   : blocked_      ? "NCHWc8 1x1 (panel " + s(blk_ps_) + " px; items up to " +
                                          s(blk_whole_ps_) + " px in one)"
                   : blocked_out_ ? (phases_ ? "NCHW -> NCHWc8 phase-plane (output rows >= 24 wide) or im2col"
                                             : "NCHW -> NCHWc8 im2col")
                   : direct_      ? "direct 1x1"
                   : phases_ ? "phase-plane (output rows >= 24 wide) or im2col"
                             : "im2col") +
                  " path, " + s(w_.nblocks()) + " nonzero blocks of " + s(w_.B) + ", panel T=" +
                  s(panel_.T) + (static_hw_ > 0 ? ", offsets cached for HW=" + s(static_hw_) : "") +
                  (kchunks_.active() ? ", " + s(int64_t(kchunks_.chunks.size())) + " K chunks" : ""));
}

sk::Epilogue SparseConvKernel::epilogue() const {
  sk::Epilogue ep;
  ep.bias = bias_.empty() ? nullptr : bias_.data();
  ep.lo = act_.lo;
  ep.hi = act_.hi;
  ep.residual_after_act = residual_after_act_;
  return ep;
}

// An NCHW X's checks and output size (the NCHW op and the NCHW -> NCHWc8 one).
void SparseConvKernel::nchw_geometry(const TensorView& X, int64_t* OH, int64_t* OW) const {
  if (X.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("X must be float32, got ") + dtype_name(X.type));
  if (X.shape.size() != 4)
    throw Error("X must be 4-D [N, C, H, W], got shape " + X.shape_str());
  if (X.shape[1] != C_)
    throw Error("X has shape " + X.shape_str() + " but in_channels = " + s(C_));
  const int64_t H = X.shape[2], W = X.shape[3];
  *OH = out_size(H, kh_, sh_, dh_, pt_, pb_);
  *OW = out_size(W, kw_, sw_, dw_, pl_, pr_);
  if (*OH < 1 || *OW < 1)
    throw Error("X spatial size " + s(H) + "x" + s(W) + " (padded " + s(H + pt_ + pb_) + "x" +
                s(W + pl_ + pr_) + ") is smaller than the dilated kernel " +
                s(dh_ * (kh_ - 1) + 1) + "x" + s(dw_ * (kw_ - 1) + 1));
  if (*OH > INT32_MAX || *OW > INT32_MAX || H > INT32_MAX || W > INT32_MAX)
    throw Error("X spatial size " + s(H) + "x" + s(W) + " is too large");
}

void SparseConvKernel::compute(OrtKernelContext* ctx) const {
  if (blocked_) return compute_blocked(ctx);
  if (blocked_out_) return compute_blocked_out(ctx);
  const TensorView X = view_tensor(api_, get_input(api_, ctx, kInX), "X");
  int64_t OH, OW;
  nchw_geometry(X, &OH, &OW);
  const int64_t N = X.shape[0], H = X.shape[2], W = X.shape[3];
  const std::vector<int64_t> ydims = {N, M_, OH, OW};
  const float* res = get_residual(api_, ctx, kInResidual, ydims);
  float* y = get_output(api_, ctx, ydims);
  if (N == 0) return;
  const float* x = static_cast<const float*>(X.data);
  if (direct_ && H * W <= INT32_MAX / C_)
    run_direct(ctx, x, y, res, N, H * W);
  else if (phase_path_fits(OW))
    run_phases(ctx, x, y, res, N, H, W, OH, OW, false);
  else
    run_im2col(ctx, x, y, res, N, H, W, OH, OW);
}

void SparseConvKernel::run_direct(OrtKernelContext* ctx, const float* x, float* y,
                                  const float* res, int64_t N, int64_t P) const {
  const int32_t* xoff = static_xoff_.data();
  Scratch<int32_t> local;
  if (P != static_hw_) {  // shape not known at creation (or changed): offsets for this call
    local.reset(std::max<size_t>(1, w_.k.size()));
    direct_offsets(w_, P, local.get());
    xoff = local.get();
  }
  const sk::SpMat m = spmat(w_, xoff);
  const sk::SpmmFn spmm = spmm_fn(kt_, w_.B);
  const sk::Epilogue ep0 = epilogue();
  const int64_t M = M_, C = C_, G = w_.G;
  // Split by pixels (each thread gets part of X and of Y) for large images, and for B = 4 also
  // from 4 register tiles up; else by output-channel groups.  MobileNetV1's 196-pixel layers
  // at 90% 1x4, 2 threads: 0.114 ms (groups) -> 0.098-0.101 (pixels); its 49-pixel layers
  // lose with pixels (0.065 -> 0.079), and so do B = 1 kernels, which want long rows.
  if (P > kSmallPixels || (w_.B == 4 && P >= 4 * kt_->tile_pixels)) {
    const PixelSplit ps = split_pixels(P, pixel_tile(kt_, C), kt_);
    parallel_for(api_, ctx, size_t(N * ps.n), [&](size_t i) {
      const int64_t n = int64_t(i) / ps.n, t = int64_t(i) % ps.n;
      const int64_t p0 = ps.begin(t), len = ps.len(t);
      sk::Epilogue ep = ep0;
      if (res) ep.residual = res + n * M * P + p0, ep.residual_stride = P;
      spmm(size_t(len), m, 0, int(G), x + n * C * P + p0, y + n * M * P + p0, P, ep);
    });
  } else {
    const GroupChunks gc = group_chunks(int(G));
    parallel_for(api_, ctx, size_t(N * gc.n), [&](size_t i) {
      const int64_t n = int64_t(i) / gc.n;
      const int c = int(int64_t(i) % gc.n);
      sk::Epilogue ep = ep0;
      if (res) ep.residual = res + n * M * P, ep.residual_stride = P;
      spmm(size_t(P), m, gc.begin(c), gc.end(c), x + n * C * P, y + n * M * P, P, ep);
    });
  }
}

// Panel rows u for output pixels [p0, p0+len) of one image: panel[u*T + t].
void SparseConvKernel::im2col(const float* x_img, int64_t H, int64_t W, int64_t OW, int64_t p0,
                              int64_t len, float* panel, int64_t T) const {
  for (size_t u = 0; u < panel_.rows.size(); ++u) {
    const float* xc = x_img + int64_t(tap_c_[u]) * H * W;
    const int64_t dy = tap_dy_[u], dx = tap_dx_[u];
    // Output columns ox with 0 <= ox*sw + dx < W.
    const int64_t ox_lo = dx >= 0 ? 0 : (-dx + sw_ - 1) / sw_;
    const int64_t ox_hi = (W - 1 - dx) < 0 ? 0 : (W - 1 - dx) / sw_ + 1;
    float* d = panel + int64_t(u) * T;
    int64_t t = 0, oy = p0 / OW, ox0 = p0 % OW;
    while (t < len) {
      const int64_t seg = std::min(OW - ox0, len - t);
      const int64_t iy = oy * sh_ + dy;
      float* dst = d + t;  // dst[ox - ox0] for ox in [ox0, ox0+seg)
      if (iy < 0 || iy >= H) {
        std::memset(dst, 0, size_t(seg) * sizeof(float));
      } else {
        const float* row = xc + iy * W;  // row[ox*sw + dx] is in range for ox in [a, b)
        const int64_t a = std::min(std::max(ox_lo, ox0), ox0 + seg);
        const int64_t b = std::max(std::min(ox_hi, ox0 + seg), a);
        for (int64_t ox = ox0; ox < a; ++ox) dst[ox - ox0] = 0.0f;
        if (sw_ == 1) {
          if (b > a) std::memcpy(dst + (a - ox0), row + a + dx, size_t(b - a) * sizeof(float));
        } else if (sw_ == 2) {  // the stride-2 stem convs: a loop GCC vectorises (shuffles)
          float* __restrict d2 = dst + (a - ox0);
          const float* __restrict s2 = row + 2 * a + dx;
          const int64_t cnt = b - a;
          for (int64_t i = 0; i < cnt; ++i) d2[i] = s2[2 * i];
        } else {
          for (int64_t ox = a; ox < b; ++ox) dst[ox - ox0] = row[ox * sw_ + dx];
        }
        for (int64_t ox = b; ox < ox0 + seg; ++ox) dst[ox - ox0] = 0.0f;
      }
      t += seg;
      ox0 = 0;
      ++oy;
    }
  }
}

void SparseConvKernel::run_im2col(OrtKernelContext* ctx, const float* x, float* y,
                                  const float* res, int64_t N, int64_t H, int64_t W, int64_t OH,
                                  int64_t OW) const {
  const int64_t P = OH * OW, T = panel_.T, R = int64_t(panel_.rows.size());
  const int64_t panel_size = std::max<int64_t>(1, R * T);
  const int64_t ntiles = (P + T - 1) / T;
  const sk::SpMat m = spmat(w_, panel_.x_offset.data());
  const sk::SpmmFn spmm = spmm_fn(kt_, w_.B);
  const sk::Epilogue ep0 = epilogue();
  const int64_t M = M_, C = C_, G = w_.G;
  if (P > kSmallPixels) {
    // One item per (image, pixel tile): im2col into its own panel, then all output groups.
    // Tiles are balanced (at most T pixels each); the panel's row stride stays T.
    const PixelSplit ps = split_pixels(P, T, kt_);
    parallel_for(api_, ctx, size_t(N * ps.n), [&](size_t i) {
      const int64_t n = int64_t(i) / ps.n, t = int64_t(i) % ps.n;
      const int64_t p0 = ps.begin(t), len = ps.len(t);
      Scratch<float> panel{size_t(panel_size)};
      im2col(x + n * C * H * W, H, W, OW, p0, len, panel.get(), T);
      sk::Epilogue ep = ep0;
      if (res) ep.residual = res + n * M * P + p0, ep.residual_stride = P;
      spmm_maybe_chunked(kchunks_, spmm, m, size_t(len), 0, int(G), panel.get(),
                         y + n * M * P + p0, P, ep);
    });
    return;
  }
  // Small images: gather all tiles of a few images, then split output-channel groups.
  const int64_t per_img = ntiles * panel_size;
  const int64_t nb = std::max<int64_t>(1, std::min<int64_t>(N, (8 << 20) / 4 / per_img));
  Scratch<float> panels(size_t(nb * per_img));
  const GroupChunks gc = group_chunks(int(G));
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    const int64_t cnt = std::min(nb, N - n0);
    parallel_for(api_, ctx, size_t(cnt * ntiles), [&](size_t i) {
      const int64_t n = int64_t(i) / ntiles, t = int64_t(i) % ntiles, p0 = t * T;
      im2col(x + (n0 + n) * C * H * W, H, W, OW, p0, std::min(T, P - p0),
             panels.get() + (n * ntiles + t) * panel_size, T);
    });
    parallel_for(api_, ctx, size_t(cnt * ntiles * gc.n), [&](size_t i) {
      const int c = int(int64_t(i) % gc.n);
      const int64_t nt = int64_t(i) / gc.n, n = nt / ntiles, p0 = (nt % ntiles) * T;
      const int64_t len = std::min(T, P - p0);
      sk::Epilogue ep = ep0;
      if (res) ep.residual = res + (n0 + n) * M * P + p0, ep.residual_stride = P;
      spmm_maybe_chunked(kchunks_, spmm, m, size_t(len), gc.begin(c), gc.end(c),
                         panels.get() + nt * panel_size, y + (n0 + n) * M * P + p0, P, ep);
    });
  }
}

// ---- phase-plane path -------------------------------------------------------------------
// For strided convs with a short reduction (the 3x3 / 7x7 stride-2 stems on 3 channels) the
// input rows a band of output rows reads are split into stride x stride zero-padded planes,
//   phase[py][px][c][i][j] = X[c][s*i + py - pad_t][s*j + px - pad_l]  (0 outside X),
// so tap (c, ky, kx) of output pixel (oy, ox) is phase[ky%s][kx%s][c][oy + ky/s][ox + kx/s]:
// one fixed offset per block from the output row's start, and each output row is one spmm
// call over OW pixels with no gather at all.  (im2col of MobileNetV1's stem took longer than
// its FLOPs: 0.9-1.3 ms against onnxruntime's 0.4-0.5 ms + 0.14 ms of NCHWc reorder.)
namespace {
// even[j] = src[2j], odd[j] = src[2j + 1] for j < n.
void deinterleave2(const float* src, float* even, float* odd, int64_t n) {
  int64_t j = 0;
#if defined(__SSE2__)
  for (; j + 4 <= n; j += 4) {
    const __m128 a = _mm_loadu_ps(src + 2 * j), b = _mm_loadu_ps(src + 2 * j + 4);
    _mm_storeu_ps(even + j, _mm_shuffle_ps(a, b, 0x88));
    _mm_storeu_ps(odd + j, _mm_shuffle_ps(a, b, 0xDD));
  }
#endif
  for (; j < n; ++j) even[j] = src[2 * j], odd[j] = src[2 * j + 1];
}

// d[j] = src[j - pl] for j < n (0 where j - pl is outside [0, W)).
void shifted_row(const float* src, int64_t W, int64_t pl, float* d, int64_t n) {
  const int64_t lo = std::min(n, std::max<int64_t>(0, pl));
  const int64_t hi = std::max(lo, std::min(n, W + pl));
  std::memset(d, 0, size_t(lo) * sizeof(float));
  std::memcpy(d + lo, src + (lo - pl), size_t(hi - lo) * sizeof(float));
  std::memset(d + hi, 0, size_t(n - hi) * sizeof(float));
}

// The stride-2 phase rows of one input row, straight from it (no padded copy first):
// d[px][j] = src[2j + px - pl] for j < n (0 outside [0, W)).  Source element i lands in phase
// (i + pl) % 2 at column (i + pl) / 2: the even elements in phase pl % 2 from column pl / 2,
// the odd ones in the other from (pl + 1) / 2.
void phase_rows2(const float* src, int64_t W, int64_t pl, float* d0, float* d1, int64_t n) {
  float* d[2] = {d0, d1};
  float* de = d[pl % 2];
  float* dodd = d[(pl + 1) % 2];
  const int64_t oe = pl / 2, oo = (pl + 1) / 2;  // first column of each
  // source pairs (2m, 2m + 1) whose both columns fall inside the rows
  const int64_t pairs = std::max<int64_t>(0, std::min(W / 2, std::min(n - oe, n - oo)));
  std::memset(de, 0, size_t(std::min(oe, n)) * sizeof(float));
  std::memset(dodd, 0, size_t(std::min(oo, n)) * sizeof(float));
  if (oe + pairs < n) std::memset(de + oe + pairs, 0, size_t(n - oe - pairs) * sizeof(float));
  if (oo + pairs < n) std::memset(dodd + oo + pairs, 0, size_t(n - oo - pairs) * sizeof(float));
  deinterleave2(src, de + oe, dodd + oo, pairs);
  for (int64_t i = 2 * pairs; i < W; ++i) {  // an odd W's last element; what the rows still reach
    const int64_t col = (i + pl) / 2;
    if (col < n) d[(i + pl) % 2][col] = src[i];
  }
}
}  // namespace

bool SparseConvKernel::phase_path_fits(int64_t OW) const {
  if (!phases_ || OW < kPhaseMinWidth) return false;
  const int64_t Hh = kPhaseMaxBand + (kh_ - 1) / sh_, Wh = OW + (kw_ - 1) / sw_;  // a band's planes
  return Hh * Wh <= INT32_MAX / (sh_ * sw_ * C_);  // offsets are int32
}

void SparseConvKernel::run_phases(OrtKernelContext* ctx, const float* x, float* y,
                                  const float* res, int64_t N, int64_t H, int64_t W,
                                  int64_t OH, int64_t OW, bool blocked) const {
  const int64_t s = sh_, C = C_, M = M_, P = OH * OW, taps = kh_ * kw_;
  // Output rows per parallel item: a few, so 2-4 threads get even shares.  Each item splits
  // just the input rows its output rows read into its own phase planes (Hh rows: the band and
  // the rows below it that the taps reach), small enough to stay in L2 while they are used.
  const int64_t band = std::max<int64_t>(1, std::min<int64_t>(kPhaseMaxBand, OH / 16));
  const int64_t nbands = (OH + band - 1) / band;
  const int64_t Hh = band + (kh_ - 1) / s, Wh = OW + (kw_ - 1) / s;  // a phase plane's size
  const int64_t plane = Hh * Wh, total = s * s * C * plane;
  Scratch<int32_t> xoff{std::max<size_t>(1, w_.k.size())};
  // reduction index k = (c, ky, kx) -> its tap's offset from an output row's start
  const auto phase_offset = [&](int64_t k) {
    const int64_t c = k / taps, ky = (k % taps) / kw_, kx = k % kw_;
    return int32_t((((ky % s) * s + kx % s) * C + c) * plane + (ky / s) * Wh + kx / s);
  };
  for (size_t j = 0; j < w_.k.size(); ++j) xoff.get()[j] = phase_offset(w_.k[j]);
  // the dense path's taps are the panel's rows (reduction indices, as w_.k)
  Scratch<int32_t> doff{dense_ ? panel_.rows.size() : 1};
  for (size_t u = 0; dense_ && u < panel_.rows.size(); ++u) doff.get()[u] = phase_offset(panel_.rows[u]);
  const sk::DenseMat dm = dense_mat(doff.get());
  const sk::SpMat m = spmat(w_, xoff.get());
  const sk::SpmmFn spmm = spmm_fn(kt_, w_.B);
  sk::Epilogue ep0 = epilogue();
  // Blocked Y: the panel kernel reads each row up to OW rounded to 8, so when OW is not a
  // multiple of 8 the rows a short band leaves unwritten and 8 floats past the planes are
  // zeroed (read, never used).
  const int64_t mb = (M + kBL - 1) / kBL, ybs = P * kBL;
  const bool overread = blocked && OW % kBL != 0;
  if (blocked) ep0.bias = blk_bias_.empty() ? nullptr : blk_bias_.data();
  if (blocked && dense_) ep0.bias = dense_bias_.empty() ? nullptr : dense_bias_.data();
  parallel_for(api_, ctx, size_t(N * nbands), [&](size_t item) {
    const int64_t n = int64_t(item) / nbands, oy0 = int64_t(item) % nbands * band;
    const int64_t rows = std::min(band, OH - oy0);
    const int64_t used = rows + (kh_ - 1) / s;  // plane rows the band's taps read
    Scratch<float> ph{size_t(total + kBL)};
    if (overread) {
      for (int64_t q = 0; q < s * s * C; ++q)
        std::memset(ph.get() + q * plane + used * Wh, 0, size_t((Hh - used) * Wh) * sizeof(float));
      std::memset(ph.get() + total, 0, size_t(kBL) * sizeof(float));
    }
    const float* xn = x + n * C * H * W;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t py = 0; py < s; ++py)
        for (int64_t r = 0; r < used; ++r) {
          const int64_t iy = s * (oy0 + r) + py - pt_;
          float* d0 = ph.get() + ((py * s * C) + c) * plane + r * Wh;  // phase (py, 0)
          float* d1 = s == 2 ? d0 + C * plane : nullptr;              // phase (py, 1)
          if (iy < 0 || iy >= H) {
            std::memset(d0, 0, size_t(Wh) * sizeof(float));
            if (s == 2) std::memset(d1, 0, size_t(Wh) * sizeof(float));
            continue;
          }
          const float* src = xn + (c * H + iy) * W;
          if (s == 1)
            shifted_row(src, W, pl_, d0, Wh);
          else
            phase_rows2(src, W, pl_, d0, d1, Wh);
        }
    for (int64_t r = 0; r < rows; ++r) {
      sk::Epilogue ep = ep0;
      if (blocked) {
        const int64_t at = n * mb * ybs + (oy0 + r) * OW * kBL;
        if (res) ep.residual = res + at, ep.residual_stride = ybs;
        if (dense_)
          kt_->dense_blocked(size_t(OW), dm, ph.get() + r * Wh, 1, y + at, ybs, ep);
        else
          kt_->spmm_b4_panel_blocked(size_t(OW), m, 0, int(2 * mb), ph.get() + r * Wh, y + at,
                                     ybs, ep);
      } else {
        const int64_t at = n * M * P + (oy0 + r) * OW;
        if (res) ep.residual = res + at, ep.residual_stride = P;
        spmm(size_t(OW), m, 0, int(w_.G), ph.get() + r * Wh, y + at, P, ep);
      }
    }
  });
}

// ---- layout NCHWc8 -------------------------------------------------------------------------
// A 1x1 conv between channel-blocked tensors (docs/format.md): same packed weights, the kernel
// reads X through a per-chunk transposed panel and stores Y blocks directly (spmm_blocked.h).
void SparseConvKernel::init_blocked(const Api& api, const OrtKernelInfo* info) {
  if (!direct_ || dh_ != 1 || dw_ != 1)
    throw Error("layout NCHWc8 needs a 1x1 conv with stride 1 and no pads, got kernel " +
                s(kh_) + "x" + s(kw_) + ", strides " + s(sh_) + "x" + s(sw_) + ", pads [" +
                s(pt_) + ", " + s(pl_) + ", " + s(pb_) + ", " + s(pr_) + "]");
  if (w_.B != 4)
    throw Error("layout NCHWc8 needs 1x4 blocks (block = 4), got block " + s(w_.B));
  // Declared shapes of the blocked inputs must agree with the layout: a crafted model fails
  // here, not at run time (as DepthwiseConv and Reorder do).
  std::vector<int64_t> xs;
  if (input_static_shape(api, info, kInX, &xs)) check_blocked_shape(xs, C_, "X");
  if (input_present(api, info, kInResidual) &&
      input_static_shape(api, info, kInResidual, &xs))
    check_blocked_shape(xs, M_, "residual");
  const int64_t K8 = (C_ + kBL - 1) / kBL * kBL;
  if (K8 > INT32_MAX / 976)
    throw Error("in_channels = " + s(C_) + " is too large for layout NCHWc8");
  blk_ps_ = blocked_narrow_stride(K8, M_);
  blk_whole_ps_ = blocked_whole_stride(K8);
  blk_xoff_.resize(std::max<size_t>(1, w_.k.size()));
  for (size_t j = 0; j < w_.k.size(); ++j) blk_xoff_[j] = w_.k[j] * blk_ps_;
  if (blk_whole_ps_ != blk_ps_) {  // else every item runs through blk_xoff_
    blk_whole_xoff_.resize(blk_xoff_.size());
    for (size_t j = 0; j < w_.k.size(); ++j) blk_whole_xoff_[j] = w_.k[j] * blk_whole_ps_;
  }
  if (!bias_.empty()) {
    blk_bias_.assign(size_t((M_ + kBL - 1) / kBL * kBL), 0.0f);
    std::copy(bias_.begin(), bias_.end(), blk_bias_.begin());
  }
}

void SparseConvKernel::compute_blocked(OrtKernelContext* ctx) const {
  const int64_t kb = (C_ + kBL - 1) / kBL, mb = (M_ + kBL - 1) / kBL;
  const TensorView X = view_tensor(api_, get_input(api_, ctx, kInX), "X");
  if (X.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("X must be float32, got ") + dtype_name(X.type));
  if (X.shape.size() != 5 || X.shape[1] != kb || X.shape[4] != kBL)
    throw Error("X has shape " + X.shape_str() + " but layout NCHWc8 with " + s(C_) +
                " in_channels needs [N, " + s(kb) + ", H, W, 8]");
  const int64_t N = X.shape[0], H = X.shape[2], W = X.shape[3];
  const int64_t P = H * W;
  if (H > INT32_MAX || W > INT32_MAX || P > INT32_MAX / kBL)
    throw Error("X spatial size " + s(H) + "x" + s(W) + " is too large");
  const std::vector<int64_t> ydims = {N, mb, H, W, kBL};
  const float* res = get_residual(api_, ctx, kInResidual, ydims);
  float* y = get_output(api_, ctx, ydims);
  if (N == 0 || P == 0) return;
  const float* x = static_cast<const float*>(X.data);
  sk::Epilogue ep0 = epilogue();
  ep0.bias = blk_bias_.empty() ? nullptr : blk_bias_.data();
  const int64_t xbs = P * kBL, ybs = P * kBL;  // block strides
  const int G2 = int(2 * mb);  // half-block groups, the last one possibly empty
  // the dense kernel's tap offsets are int32 (k/8 blocks of P*8 floats): beyond that, 1x4
  if (dense_ && kb * xbs <= INT32_MAX) return run_dense_blocked(ctx, x, y, res, N, P);
  // A work item that fits one 64 KiB panel runs as one chunk, a wider one in narrow chunks
  // (MobileNetV2's 196-pixel layers, 4 items of ~49 pixels, stay one chunk each: in 32-pixel
  // chunks they ran up to 1.4x slower).
  const bool pixel_split = blocked_pixel_split(kt_, P);
  const PixelSplit ps = split_pixels(P, pixel_tile(kt_, C_), kt_);
  const int pstride = blocked_panel_stride(kt_, P, C_, M_);  // blk_ps_ or blk_whole_ps_
  const sk::SpMat m = spmat(w_, pstride == blk_ps_ ? blk_xoff_.data() : blk_whole_xoff_.data());
  const size_t panel = size_t(kb * kBL * pstride);
  // The NCHW op's split: pixels for large images (each item transposes only its own pixels),
  // Y blocks for small ones (each item transposes all of X's few pixels into its own panel).
  if (pixel_split) {
    parallel_for_affine(api_, ctx, size_t(N * ps.n), [&](size_t i) {
      const int64_t n = int64_t(i) / ps.n, t = int64_t(i) % ps.n;
      const int64_t p0 = ps.begin(t), len = ps.len(t);
      Scratch<float> pan{panel};
      sk::Epilogue ep = ep0;
      if (res) ep.residual = res + n * mb * ybs + p0 * kBL, ep.residual_stride = ybs;
      kt_->spmm_b4_blocked(size_t(len), m, 0, G2, x + n * kb * xbs + p0 * kBL, xbs, int(kb),
                           y + n * mb * ybs + p0 * kBL, ybs, ep, pan.get(), pstride);
    });
  } else {
    // Whole Y blocks per item (no cache line shared between threads), and only 2 items (the
    // 2-core target): each transposes all of X again.
    const GroupChunks gc{int(std::min<int64_t>(mb, 2)), int(mb)};
    parallel_for_affine(api_, ctx, size_t(N * gc.n), [&](size_t i) {
      const int64_t n = int64_t(i) / gc.n;
      const int c = int(int64_t(i) % gc.n);
      Scratch<float> pan{panel};
      sk::Epilogue ep = ep0;
      if (res) ep.residual = res + n * mb * ybs, ep.residual_stride = ybs;
      kt_->spmm_b4_blocked(size_t(P), m, 2 * gc.begin(c), 2 * gc.end(c), x + n * kb * xbs, xbs,
                           int(kb), y + n * mb * ybs, ybs, ep, pan.get(), pstride);
    });
  }
}

size_t SparseConvKernel::pixel_panel_floats() const {
  return size_t((C_ + kBL - 1) / kBL * kBL * blk_ps_);
}

void SparseConvKernel::blocked_pixels(const float* x_img, int64_t P, int64_t p0, int64_t n,
                                      float* y, int64_t y_bstride, float* panel) const {
  const int64_t kb = (C_ + kBL - 1) / kBL, xbs = P * kBL;
  sk::Epilogue ep = epilogue();
  if (dense_ && kb * xbs <= INT32_MAX) {  // as compute_blocked: int32 tap offsets
    Scratch<int32_t> xoff;  // the taps are offsets into X: the image's block stride
    ep.bias = dense_bias_.empty() ? nullptr : dense_bias_.data();
    kt_->dense_blocked(size_t(n), blocked_dense_mat(xbs, &xoff), x_img + p0 * kBL, kBL, y,
                       y_bstride, ep);
    return;
  }
  ep.bias = blk_bias_.empty() ? nullptr : blk_bias_.data();
  const int64_t mb = (M_ + kBL - 1) / kBL;
  kt_->spmm_b4_blocked(size_t(n), spmat(w_, blk_xoff_.data()), 0, int(2 * mb), x_img + p0 * kBL,
                       xbs, int(kb), y, y_bstride, ep, panel, blk_ps_);
}

// ---- NCHW in, NCHWc8 out --------------------------------------------------------------------
// Any conv (a network's stem, a strided or k x k layer before a blocked chain) writing its
// output in channel blocks, so no Reorder follows it: im2col panels of the NCHW X as on the
// im2col path, swept by the blocked kernel's tiles (spmm_blocked.h) into Y blocks.
void SparseConvKernel::init_blocked_out(const Api& api, const OrtKernelInfo* info) {
  if (w_.B != 4)
    throw Error("layout NCHWc8 needs 1x4 blocks (block = 4), got block " + s(w_.B));
  std::vector<int64_t> xs;
  if (input_static_shape(api, info, kInX, &xs) && (xs.size() != 4 || (xs[1] >= 0 && xs[1] != C_)))
    throw Error("X is declared with shape " + shape_str(xs) + ", but input_layout NCHW with " +
                s(C_) + " in_channels needs [N, " + s(C_) + ", H, W]");
  if (input_present(api, info, kInResidual) &&
      input_static_shape(api, info, kInResidual, &xs))
    check_blocked_shape(xs, M_, "residual");
  out_T_ = (int64_t(panel_.T) + kBL - 1) / kBL * kBL;
  if (int64_t(panel_.rows.size()) * out_T_ > INT32_MAX)
    throw Error("weights reference too many reduction rows (" + s(int64_t(panel_.rows.size())) +
                ")");
  blk_xoff_.resize(std::max<size_t>(1, w_.k.size()));
  for (size_t j = 0; j < w_.k.size(); ++j)
    blk_xoff_[j] = int32_t(panel_.x_offset[j] / panel_.T * out_T_);
  if (!bias_.empty()) {
    blk_bias_.assign(size_t((M_ + kBL - 1) / kBL * kBL), 0.0f);
    std::copy(bias_.begin(), bias_.end(), blk_bias_.begin());
  }
}

void SparseConvKernel::compute_blocked_out(OrtKernelContext* ctx) const {
  const TensorView X = view_tensor(api_, get_input(api_, ctx, kInX), "X");
  int64_t OH, OW;
  nchw_geometry(X, &OH, &OW);
  const int64_t N = X.shape[0], H = X.shape[2], W = X.shape[3];
  const int64_t P = OH * OW, mb = (M_ + kBL - 1) / kBL;
  if (P > INT32_MAX / kBL) throw Error("output size " + s(OH) + "x" + s(OW) + " is too large");
  const std::vector<int64_t> ydims = {N, mb, OH, OW, kBL};
  const float* res = get_residual(api_, ctx, kInResidual, ydims);
  float* y = get_output(api_, ctx, ydims);
  if (N == 0) return;
  const float* x = static_cast<const float*>(X.data);
  if (phase_path_fits(OW)) return run_phases(ctx, x, y, res, N, H, W, OH, OW, true);
  const sk::SpMat m = spmat(w_, blk_xoff_.data());
  sk::Epilogue ep0 = epilogue();
  ep0.bias = blk_bias_.empty() ? nullptr : blk_bias_.data();
  if (dense_) ep0.bias = dense_bias_.empty() ? nullptr : dense_bias_.data();
  const sk::DenseMat dm = dense_mat(dense_xoff_.data());  // panel row u at u * out_T_
  const int64_t T = out_T_, R = std::max<int64_t>(1, int64_t(panel_.rows.size()));
  const int64_t ybs = P * kBL, C = C_;
  const int G2 = int(2 * mb);
  // One item per (image, pixel tile of at most panel_.T pixels): im2col into its own panel,
  // the rows' tails up to a whole vector zeroed (the tiles read them), then all groups.
  const PixelSplit ps = split_pixels(P, panel_.T, kt_);
  parallel_for_affine(api_, ctx, size_t(N * ps.n), [&](size_t i) {
    const int64_t n = int64_t(i) / ps.n, t = int64_t(i) % ps.n;
    const int64_t p0 = ps.begin(t), len = ps.len(t);
    Scratch<float> panel{size_t(R * T)};
    im2col(x + n * C * H * W, H, W, OW, p0, len, panel.get(), T);
    const int64_t len8 = (len + kBL - 1) / kBL * kBL;
    for (int64_t u = 0; u < int64_t(panel_.rows.size()); ++u)
      std::fill(panel.get() + u * T + len, panel.get() + u * T + len8, 0.0f);
    sk::Epilogue ep = ep0;
    if (res) ep.residual = res + n * mb * ybs + p0 * kBL, ep.residual_stride = ybs;
    if (dense_)
      kt_->dense_blocked(size_t(len), dm, panel.get(), 1, y + n * mb * ybs + p0 * kBL, ybs, ep);
    else
      kt_->spmm_b4_panel_blocked(size_t(len), m, 0, G2, panel.get(),
                                 y + n * mb * ybs + p0 * kBL, ybs, ep);
  });
}

// ---- dense weights into channel blocks ------------------------------------------------------
// At this share of kept 1x4 blocks (over the reduction rows the weights read) the dense kernel,
// which does every multiply but transposes nothing, beats the 1x4 one: MobileNetV2's
// 12544x32x16, 3136x96x24 and 3136x24x144 1x1 convs together (avx512, Zen 5, 1 thread) at 80%
// kept 0.253 ms dense vs 0.264 1x4, at 65% kept 0.257 vs 0.227.
constexpr double kDenseMinShare = 0.75;

void SparseConvKernel::init_dense() {
  const int64_t R = int64_t(panel_.rows.size());
  if (R == 0 || double(w_.nblocks()) < kDenseMinShare * double(R) * double(w_.G)) return;
  const int64_t m16 = sk::dense_m16(int(M_));
  if (R > INT32_MAX / m16) return;
  dense_ = true;
  dense_w_.assign(size_t(R * m16), 0.0f);
  for (int32_t g = 0; g < w_.G; ++g)
    for (int32_t j = w_.group_ptr[g]; j < w_.group_ptr[g + 1]; ++j) {
      const int64_t u = std::lower_bound(panel_.rows.begin(), panel_.rows.end(), w_.k[j]) -
                        panel_.rows.begin();
      for (int b = 0; b < 4 && g * 4 + b < M_; ++b)
        dense_w_[size_t(u * m16 + g * 4 + b)] = w_.values[size_t(j) * 4 + b];
    }
  if (!bias_.empty()) {
    dense_bias_.assign(size_t(m16), 0.0f);
    std::copy(bias_.begin(), bias_.end(), dense_bias_.begin());
  }
  if (blocked_out_) {  // the im2col path's panel rows (init_blocked_out checked R * out_T_)
    dense_xoff_.resize(size_t(R));
    for (int64_t u = 0; u < R; ++u) dense_xoff_[size_t(u)] = int32_t(u * out_T_);
  }
}

sk::DenseMat SparseConvKernel::dense_mat(const int32_t* x_offset) const {
  sk::DenseMat dm;
  dm.rows = int(M_);
  dm.taps = int(panel_.rows.size());
  dm.x_offset = x_offset;
  dm.values = dense_w_.data();
  return dm;
}

// The dense weights over a blocked X of block stride xbs: tap u reads lane k%8 of block k/8
// (k = panel_.rows[u]); the offsets go to `xoff`, which must outlive the matrix.
sk::DenseMat SparseConvKernel::blocked_dense_mat(int64_t xbs, Scratch<int32_t>* xoff) const {
  xoff->reset(panel_.rows.size());
  for (size_t u = 0; u < panel_.rows.size(); ++u) {
    const int64_t k = panel_.rows[u];
    xoff->get()[u] = int32_t((k / kBL) * xbs + k % kBL);
  }
  return dense_mat(xoff->get());
}

// The 1x1 conv between blocked tensors with dense weights: pixel ranges (as compute_blocked),
// tap u reading lane k%8 of X block k/8 (k = panel_.rows[u]), X's pixels 8 floats apart.
void SparseConvKernel::run_dense_blocked(OrtKernelContext* ctx, const float* x, float* y,
                                         const float* res, int64_t N, int64_t P) const {
  const int64_t kb = (C_ + kBL - 1) / kBL, mb = (M_ + kBL - 1) / kBL;
  const int64_t xbs = P * kBL, ybs = P * kBL;
  Scratch<int32_t> xoff;
  const sk::DenseMat dm = blocked_dense_mat(xbs, &xoff);
  sk::Epilogue ep0 = epilogue();
  ep0.bias = dense_bias_.empty() ? nullptr : dense_bias_.data();
  const PixelSplit ps = split_pixels(P, pixel_tile(kt_, C_), kt_);
  parallel_for_affine(api_, ctx, size_t(N * ps.n), [&](size_t i) {
    const int64_t n = int64_t(i) / ps.n, t = int64_t(i) % ps.n;
    const int64_t p0 = ps.begin(t), len = ps.len(t);
    sk::Epilogue ep = ep0;
    if (res) ep.residual = res + n * mb * ybs + p0 * kBL, ep.residual_stride = ybs;
    kt_->dense_blocked(size_t(len), dm, x + n * kb * xbs + p0 * kBL, kBL,
                       y + n * mb * ybs + p0 * kBL, ybs, ep);
  });
}

}  // namespace skort
