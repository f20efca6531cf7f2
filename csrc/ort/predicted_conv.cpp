// PredictedConv: see ops.h and docs/predict.md.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>

#include "ort/ops.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace skort {
namespace {
std::string s(int64_t v) { return std::to_string(v); }
enum : size_t { kPX = 0, kPW = 1, kPBias = 2, kPWq = 3, kPWqScale = 4 };
constexpr int64_t kTile = 64;  // pixels per parallel item (kernels.h: at most 64)

// fn(p0, len, rows) over conv output pixels [0, P) in tiles of equal size, at most kTile (a
// last tile of a few pixels would stream every weight for them), across the threads; rows:
// scratch for the tile's len * K4 bytes of 7-bit inputs.
template <typename F>
void for_each_tile(const Api& api, OrtKernelContext* ctx, int64_t P, int64_t K4, F&& fn) {
  const int64_t ntiles = (P + kTile - 1) / kTile, tile = (P + ntiles - 1) / ntiles;
  parallel_for(api, ctx, size_t(ntiles), [&](size_t t) {
    const int64_t p0 = int64_t(t) * tile, len = std::min(tile, P - p0);
    Scratch<uint8_t> rows(size_t(len * K4));
    fn(p0, len, rows.get());
  });
}

// min(0, x) and max(0, x) over x[0, n); false if some value is not finite.  Vectorised by hand
// on x86-64: the scalar loop with its early exit cost ~10% of a 56x56 layer.
bool finite_range(const float* x, int64_t n, float* lo, float* hi) {
  int64_t i = 0;
  float l = 0.0f, h = 0.0f;
#if defined(__SSE2__)
  const __m128 big = _mm_set1_ps(FLT_MAX), abs = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
  __m128 vl = _mm_setzero_ps(), vh = _mm_setzero_ps(), ok = _mm_castsi128_ps(_mm_set1_epi32(-1));
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_loadu_ps(x + i);
    ok = _mm_and_ps(ok, _mm_cmple_ps(_mm_and_ps(v, abs), big));  // false for inf and NaN
    vl = _mm_min_ps(vl, v);
    vh = _mm_max_ps(vh, v);
  }
  if (_mm_movemask_ps(ok) != 0xf) return false;
  alignas(16) float a[4], b[4];
  _mm_store_ps(a, vl);
  _mm_store_ps(b, vh);
  for (int j = 0; j < 4; ++j) l = std::min(l, a[j]), h = std::max(h, b[j]);
#endif
  for (; i < n; ++i) {
    if (!std::isfinite(x[i])) return false;
    l = std::min(l, x[i]);
    h = std::max(h, x[i]);
  }
  *lo = l, *hi = h;
  return true;
}
}  // namespace

const std::vector<IoSpec>& PredictedConvKernel::inputs() {
  static const std::vector<IoSpec> v = {
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},  // X [N, C, H, W]
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},  // W [M, C, kh, kw]
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_OPTIONAL},  // bias [M]
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, INPUT_OUTPUT_REQUIRED},   // W_q [M, C*kh*kw]
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},  // W_q_scale [M]
  };
  return v;
}

PredictedConvKernel::PredictedConvKernel(const Api& api, const OrtKernelInfo* info)
    : api_(api) {
  Attrs a(api, info);
  refuse_unimplemented(a, {"kernel_shape", "strides", "dilations", "pads", "activation",
                           "clip_min", "clip_max", "margin", "pool_kernel", "pool_strides",
                           "pool_pads"});
  kt_ = select_table();
  const TensorView W = constant_input(api, info, kPW, "W");
  if (W.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("W must be float32, got ") + dtype_name(W.type));
  if (W.shape.size() != 4 || W.shape[0] < 1 || W.shape[1] < 1 || W.shape[2] < 1 ||
      W.shape[3] < 1)
    throw Error("W has shape " + W.shape_str() + ", expected [M, C, kh, kw]");
  M_ = W.shape[0], C_ = W.shape[1], kh_ = W.shape[2], kw_ = W.shape[3];
  if (double(M_) * double(C_) * double(kh_) * double(kw_) > double(INT32_MAX) / 2)
    throw Error("W has shape " + W.shape_str() + ", which is too large");
  K_ = C_ * kh_ * kw_;
  C4_ = (C_ + 3) / 4 * 4;
  K4_ = kh_ * kw_ * C4_;
  // the integer prediction sums up to K products of 127 * 127 (plus the margin) in int32
  if (K_ > 65536)
    throw Error("W has shape " + W.shape_str() + ": in_channels*kh*kw = " + s(K_) +
                " exceeds 65536, the most the int32 prediction can sum");
  if (a.has("kernel_shape")) {
    const auto ks = conv_pair_attr(a, "kernel_shape", {}, 1);
    if (ks[0] != kh_ || ks[1] != kw_)
      throw Error("attribute 'kernel_shape' " + shape_str(ks) + " does not match W's shape " +
                  W.shape_str());
  }
  const auto st = conv_pair_attr(a, "strides", {1, 1}, 1);
  sh_ = st[0], sw_ = st[1];
  const auto dl = conv_pair_attr(a, "dilations", {1, 1}, 1);
  dh_ = dl[0], dw_ = dl[1];
  const auto pd = conv_pads_attr(a);
  conv_check_geometry({kh_, kw_}, st, dl, pd);
  pt_ = pd[0], pl_ = pd[1], pb_ = pd[2], pr_ = pd[3];
  const Activation act = read_activation(a);
  if (act.name == "none" || act.lo != 0.0f)
    throw Error("attribute 'activation' must be \"relu\" or \"clip\" with clip_min = 0 (the "
                "prediction skips outputs the activation sets to 0)");
  hi_ = act.hi;
  const int64_t margin = a.get_int("margin", 0);
  if (margin < 0 || margin > (1 << 24))
    throw Error("attribute 'margin' = " + s(margin) + " must be in [0, 2^24]");
  margin_ = int(margin);
  // a MaxPool after the activation (docs/predict.md): all three attributes or none
  pooled_ = a.has("pool_kernel");
  if (pooled_) {
    const auto k = conv_pair_attr(a, "pool_kernel", {}, 1);
    const auto st2 = conv_pair_attr(a, "pool_strides", {1, 1}, 1);
    const auto pd2 = a.get_ints("pool_pads", {0, 0, 0, 0});
    if (pd2.size() != 4)
      throw Error("attribute 'pool_pads' must have 4 values, got " + shape_str(pd2));
    for (size_t i = 0; i < 4; ++i)
      if (pd2[i] < 0 || pd2[i] >= k[i % 2])
        throw Error("attribute 'pool_pads' " + shape_str(pd2) +
                    " must be >= 0 and smaller than 'pool_kernel' " + shape_str(k));
    pkh_ = k[0], pkw_ = k[1], psh_ = st2[0], psw_ = st2[1];
    ppt_ = pd2[0], ppl_ = pd2[1], ppb_ = pd2[2], ppr_ = pd2[3];
  } else if (a.has("pool_strides") || a.has("pool_pads")) {
    throw Error("attributes 'pool_strides' / 'pool_pads' need 'pool_kernel'");
  }
  // the kernels read each tap's channels contiguously (channels-last): W as [M][kh*kw][C]
  const int64_t taps = kh_ * kw_;
  const float* wp = static_cast<const float*>(W.data);
  require_finite(wp, size_t(M_ * K_), "W");
  w_.assign(size_t(M_ * K_), 0.0f);
  for (int64_t m = 0; m < M_; ++m)
    for (int64_t c = 0; c < C_; ++c)
      for (int64_t t = 0; t < taps; ++t) {
        w_[size_t((m * taps + t) * C_ + c)] = wp[(m * C_ + c) * taps + t];
      }
  bias_ = read_bias(api, info, kPBias, M_, "W.shape[0] = out_channels");
  if (bias_.empty()) bias_.assign(size_t(M_), 0.0f);

  const TensorView Q = constant_input(api, info, kPWq, "W_q");
  if (Q.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8)
    throw Error(std::string("W_q must be int8, got ") + dtype_name(Q.type));
  if (Q.shape != std::vector<int64_t>{M_, K_})
    throw Error("W_q has shape " + Q.shape_str() + ", expected [" + s(M_) + ", " + s(K_) +
                "] [out_channels, in_channels*kh*kw]");
  const TensorView S = constant_input(api, info, kPWqScale, "W_q_scale");
  if (S.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("W_q_scale must be float32, got ") + dtype_name(S.type));
  if (S.shape != std::vector<int64_t>{M_})
    throw Error("W_q_scale has shape " + S.shape_str() + ", expected [" + s(M_) + "]");
  const int8_t* qp = static_cast<const int8_t*>(Q.data);
  const float* sp = static_cast<const float*>(S.data);
  wq_scale_.assign(sp, sp + M_);
  for (int64_t m = 0; m < M_; ++m)
    if (!(std::isfinite(wq_scale_[size_t(m)]) && wq_scale_[size_t(m)] >= 0.0f))
      throw Error("W_q_scale[" + s(m) + "] = " + std::to_string(wq_scale_[size_t(m)]) +
                  " is not a finite value >= 0");
  // packed [ceil(M/8)][K4/4][8 rows][4 k] with k = tap * C4 + c, zero padded; -128 is
  // excluded so |w_q| <= 127
  const int64_t nb = (M_ + 7) / 8;
  wq_.assign(size_t(nb * K4_ * 8), 0);
  wq_rowsum_.assign(size_t(M_), 0);
  int wq_max = 1;
  for (int64_t m = 0; m < M_; ++m)
    for (int64_t k = 0; k < K_; ++k) {
      const int8_t v = qp[m * K_ + k];
      if (v == -128) throw Error("W_q[" + s(m) + ", " + s(k) + "] = -128 (must be in [-127, 127])");
      const int64_t kk = (k % taps) * C4_ + k / taps;  // W_q's k runs over (c, tap)
      wq_[size_t((m / 8) * K4_ * 8 + (kk / 4) * 32 + (m % 8) * 4 + kk % 4)] = v;
      wq_rowsum_[size_t(m)] += v;
      wq_max = std::max(wq_max, std::abs(int(v)));
    }
  // low-bit weights let the kernels sum several steps' int16 pair sums before widening
  steps16_ = std::max(1, 32767 / (2 * 127 * wq_max));
  log_verbose(api, info,
              std::string("sparsekit PredictedConv '") + node_name(api, info) + "': kernels " +
                  kt_->name + ", M=" + s(M_) + " K=" + s(K_) + " |W_q| <= " + s(wq_max) +
                  " margin=" + s(margin_));
}

void PredictedConvKernel::compute(OrtKernelContext* ctx) const {
  const TensorView X = view_tensor(api_, get_input(api_, ctx, kPX), "X");
  if (X.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("X must be float32, got ") + dtype_name(X.type));
  if (X.shape.size() != 4 || X.shape[1] != C_)
    throw Error("X has shape " + X.shape_str() + ", expected [N, " + s(C_) + ", H, W]");
  const int64_t N = X.shape[0], H = X.shape[2], W = X.shape[3];
  const int64_t OH = conv_out_size(H, kh_, sh_, dh_, pt_, pb_);
  const int64_t OW = conv_out_size(W, kw_, sw_, dw_, pl_, pr_);
  if (OH < 1 || OW < 1)
    throw Error("X spatial size " + s(H) + "x" + s(W) + " is smaller than the dilated kernel");
  int64_t PH = OH, PW = OW;
  if (pooled_) {
    PH = (OH + ppt_ + ppb_ - pkh_) / psh_ + 1, PW = (OW + ppl_ + ppr_ - pkw_) / psw_ + 1;
    if (OH + ppt_ + ppb_ < pkh_ || OW + ppl_ + ppr_ < pkw_)
      throw Error("conv output " + s(OH) + "x" + s(OW) + " is smaller than the pool window");
  }
  float* y = get_output(api_, ctx, {N, M_, PH, PW});
  const int64_t P = OH * OW;
  if (N == 0 || P == 0) return;
  const float* x = static_cast<const float*>(X.data);
  sk::PredictMat pm;
  pm.M = int(M_), pm.C = int(C_), pm.C4 = int(C4_), pm.taps = int(kh_ * kw_), pm.K4 = int(K4_);
  // runs of the padded channels-last image: a kernel row when its taps are adjacent, else a tap
  const int64_t per_run = dw_ == 1 ? kw_ : 1;
  pm.runs = int(kh_ * kw_ / per_run), pm.run_len = int(per_run * C_);
  pm.run_len4 = int(per_run * C4_);
  pm.wq = wq_.data(), pm.wq_rowsum = wq_rowsum_.data(), pm.wq_scale = wq_scale_.data();
  pm.w = w_.data(), pm.bias = bias_.data(), pm.hi = hi_;
  pm.steps16 = steps16_, pm.margin = margin_;
  // the image channels-last and zero-padded so that every tap lies inside (kernels.h)
  const int64_t HW = H * W, Hp = H + pt_ + pb_, Wp = W + pl_ + pr_;
  sk::PredictImage img;
  img.Wp = int(Wp), img.OW = int(OW);
  img.kh = int(kh_), img.kw = int(kw_), img.sh = int(sh_), img.sw = int(sw_);
  img.dh = int(dh_), img.dw = int(dw_);
  Scratch<float> xhwc(size_t(Hp * Wp * C_));
  Scratch<uint8_t> xq(size_t(Hp * Wp * C4_));
  img.x = xhwc.get(), img.xq = xq.get();
  for (int64_t n = 0; n < N; ++n) {
    // 7-bit activations per image: [0, max] -> 0..127, or [min, max] with a zero point
    const float* xi = x + n * C_ * HW;
    float lo = 0.0f, hi = 0.0f;
    if (!finite_range(xi, C_ * HW, &lo, &hi)) throw Error("X has a non-finite value");
    img.sx = (hi - lo) / 127.0f;
    img.zx = img.sx > 0.0f ? int(std::lround(-lo / img.sx)) : 0;
    // padding pixels: 0, quantized zx (padding channels 0)
    auto pad = [&](int64_t py, int64_t px0, int64_t px1) {
      std::fill(xhwc.get() + (py * Wp + px0) * C_, xhwc.get() + (py * Wp + px1) * C_, 0.0f);
      for (int64_t px = px0; px < px1; ++px) {
        uint8_t* q = xq.get() + (py * Wp + px) * C4_;
        std::fill(q, q + C_, uint8_t(img.zx));
        std::fill(q + C_, q + C4_, uint8_t(0));
      }
    };
    for (int64_t py = 0; py < Hp; ++py)
      if (py < pt_ || py >= pt_ + H)
        pad(py, 0, Wp);
      else
        pad(py, 0, pl_), pad(py, pl_ + W, Wp);
    // image rows, in bands across the threads
    const int64_t bands = std::min<int64_t>(H, 16);
    parallel_for(api_, ctx, size_t(bands), [&](size_t i) {
      for (int64_t r = H * int64_t(i) / bands; r < H * int64_t(i + 1) / bands; ++r) {
        const int64_t at = (r + pt_) * Wp + pl_;
        transpose(xi + r * W, HW, xhwc.get() + at * C_, C_, C_, W);
        kt_->predict_quantize(xhwc.get() + at * C_, size_t(W), int(C_), int(C4_), img.sx,
                              img.zx, xq.get() + at * C4_);
      }
    });
    if (pooled_) {
      run_pooled(ctx, pm, img, y + n * M_ * PH * PW, OH, OW, PH, PW);
      continue;
    }
    float* yi = y + n * M_ * P;
    for_each_tile(api_, ctx, P, K4_, [&](int64_t p0, int64_t len, uint8_t* rows) {
      kt_->predict(pm, img, p0, int(len), rows, yi + p0, P);
    });
  }
}

// With a MaxPool: units of every conv output first, then per output row (channel) the
// candidates (a window's largest units within the margin, predicted positive) in full
// precision, then the pool over them (0 where nothing was computed).
void PredictedConvKernel::run_pooled(OrtKernelContext* ctx, const sk::PredictMat& pm,
                                     const sk::PredictImage& img, float* y, int64_t OH,
                                     int64_t OW, int64_t PH, int64_t PW) const {
  const int64_t P = OH * OW;
  Scratch<int32_t> units(size_t(M_ * P));
  for_each_tile(api_, ctx, P, K4_, [&](int64_t p0, int64_t len, uint8_t* rows) {
    kt_->predict_units(pm, img, p0, int(len), rows, units.get() + p0, P);
  });
  // the window of pooled output (ph, pw): conv rows [r0, r1) and columns [c0, c1)
  auto window = [&](int64_t ph, int64_t pw, int64_t* r0, int64_t* r1, int64_t* c0,
                    int64_t* c1) {
    *r0 = std::max<int64_t>(0, ph * psh_ - ppt_), *r1 = std::min(OH, ph * psh_ - ppt_ + pkh_);
    *c0 = std::max<int64_t>(0, pw * psw_ - ppl_), *c1 = std::min(OW, pw * psw_ - ppl_ + pkw_);
  };
  parallel_for(api_, ctx, size_t(M_), [&](size_t mi) {
    const int64_t m = int64_t(mi);
    const int32_t* u = units.get() + m * P;
    const float scale = img.sx * wq_scale_[size_t(m)], b = bias_[size_t(m)];
    Scratch<uint8_t> cand{size_t(P)};
    Scratch<float> val{size_t(P)};
    Scratch<int64_t> list{size_t(P)};
    std::fill(val.get(), val.get() + P, 0.0f);
    // predicted positive with the margin: the sign of fma(float(u + margin), scale, b), taken
    // from the exact product-sum in double (float * float is exact there; a sum's rounding
    // keeps its sign), which also vectorises where the fma would be a library call
    const double ds = scale, db = b;
    for (int64_t p = 0; p < P; ++p)
      cand.get()[p] = double(float(u[p] + margin_)) * ds + db > 0.0;
    // then kept only where, in some window, u is within the margin of the window's largest
    Scratch<uint8_t> near{size_t(P)};
    std::fill(near.get(), near.get() + P, uint8_t(0));
    for (int64_t ph = 0; ph < PH; ++ph)
      for (int64_t pw = 0; pw < PW; ++pw) {
        int64_t r0, r1, c0, c1;
        window(ph, pw, &r0, &r1, &c0, &c1);
        int32_t top = INT32_MIN;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) top = std::max(top, u[r * OW + c]);
        const int64_t floor = int64_t(top) - margin_;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) near.get()[r * OW + c] |= u[r * OW + c] >= floor;
      }
    for (int64_t p = 0; p < P; ++p) cand.get()[p] &= near.get()[p];
    int cnt = 0;
    for (int64_t p = 0; p < P; ++p)
      if (cand.get()[p]) list.get()[cnt++] = p;
    Scratch<float> got(size_t(std::max(cnt, 1)));
    kt_->predict_exact(pm, img, int(m), list.get(), cnt, got.get());
    for (int i = 0; i < cnt; ++i) val.get()[list.get()[i]] = got.get()[i];
    float* ym = y + m * PH * PW;
    for (int64_t ph = 0; ph < PH; ++ph)
      for (int64_t pw = 0; pw < PW; ++pw) {
        int64_t r0, r1, c0, c1;
        window(ph, pw, &r0, &r1, &c0, &c1);
        float best = 0.0f;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) best = std::max(best, val.get()[r * OW + c]);
        ym[ph * PW + pw] = best;
      }
  });
}

}  // namespace skort
