// SparseConv: Y = act(conv2d(X, W) + bias [+ residual]) for NCHW float32, group 1.
#include <algorithm>
#include <climits>
#include <cstring>

#include "ort/ops.h"

namespace skort {
namespace {

std::string s(int64_t v) { return std::to_string(v); }

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
  std::vector<int64_t> xs;
  if (direct_ && input_static_shape(api, info, kInX, &xs) && xs.size() == 4 && xs[2] > 0 &&
      xs[3] > 0 && xs[2] * xs[3] <= INT32_MAX / C_) {
    static_hw_ = xs[2] * xs[3];
    static_xoff_.resize(w_.k.size());
    direct_offsets(w_, static_hw_, static_xoff_.data());
  }
  // K chunks for the im2col path only: on the direct path (X rows an image plane apart) they
  // measured slower on MobileNetV1's 1x1 layers (e.g. 512x14x14 0.33 -> 0.39 ms at 90% bank).
  if (!residual_after_act_ && !direct_) kchunks_ = make_panel_kchunks(w_, panel_, kt_);
  log_verbose(api, info,
              std::string("sparsekit SparseConv '") + node_name(api, info) + "': kernels " +
                  kt_->name + ", " + (direct_ ? "direct 1x1" : "im2col") + " path, " +
                  s(w_.nblocks()) + " nonzero blocks of " + s(w_.B) + ", panel T=" +
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

void SparseConvKernel::compute(OrtKernelContext* ctx) const {
  const TensorView X = view_tensor(api_, get_input(api_, ctx, kInX), "X");
  if (X.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("X must be float32, got ") + dtype_name(X.type));
  if (X.shape.size() != 4)
    throw Error("X must be 4-D [N, C, H, W], got shape " + X.shape_str());
  if (X.shape[1] != C_)
    throw Error("X has shape " + X.shape_str() + " but in_channels = " + s(C_));
  const int64_t N = X.shape[0], H = X.shape[2], W = X.shape[3];
  const int64_t OH = out_size(H, kh_, sh_, dh_, pt_, pb_);
  const int64_t OW = out_size(W, kw_, sw_, dw_, pl_, pr_);
  if (OH < 1 || OW < 1)
    throw Error("X spatial size " + s(H) + "x" + s(W) + " (padded " + s(H + pt_ + pb_) + "x" +
                s(W + pl_ + pr_) + ") is smaller than the dilated kernel " +
                s(dh_ * (kh_ - 1) + 1) + "x" + s(dw_ * (kw_ - 1) + 1));
  if (OH > INT32_MAX || OW > INT32_MAX || H > INT32_MAX || W > INT32_MAX)
    throw Error("X spatial size " + s(H) + "x" + s(W) + " is too large");
  const std::vector<int64_t> ydims = {N, M_, OH, OW};
  const float* res = get_residual(api_, ctx, kInResidual, ydims);
  float* y = get_output(api_, ctx, ydims);
  if (N == 0) return;
  const float* x = static_cast<const float*>(X.data);
  if (direct_ && H * W <= INT32_MAX / C_)
    run_direct(ctx, x, y, res, N, H * W);
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
  if (P > kSmallPixels) {
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
                              int64_t len, float* panel) const {
  const int64_t T = panel_.T;
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
      im2col(x + n * C * H * W, H, W, OW, p0, len, panel.get());
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
             panels.get() + (n * ntiles + t) * panel_size);
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

}  // namespace skort
