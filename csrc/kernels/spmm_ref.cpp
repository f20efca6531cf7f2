// Scalar reference kernels: the definition every SIMD kernel is tested against.
#include "kernels/isa_parts.h"
#include "kernels/kernels.h"

namespace sk {
namespace {

inline float apply_epilogue(float acc, int r, size_t p, const Epilogue& ep) {
  if (ep.bias) acc += ep.bias[r];
  const float res = ep.residual ? ep.residual[r * ep.residual_stride + p] : 0.0f;
  if (!ep.residual_after_act) acc += res;
  acc = acc < ep.lo ? ep.lo : acc;
  acc = acc > ep.hi ? ep.hi : acc;
  if (ep.residual_after_act) acc += res;
  return acc;
}

void spmm_ref(size_t n, const SpMat& w, int g_begin, int g_end, const float* x, float* y,
              ptrdiff_t y_stride, const Epilogue& ep) {
  const int B = w.B;
  for (int g = g_begin; g < g_end; ++g) {
    for (int b = 0; b < B; ++b) {
      const int r = g * B + b;
      if (r >= w.rows) break;
      for (size_t p = 0; p < n; ++p) {
        float acc = 0.0f;
        for (int32_t j = w.group_ptr[g]; j < w.group_ptr[g + 1]; ++j)
          acc += w.values[(size_t)j * B + b] * x[w.x_offset[j] + p];
        y[r * y_stride + p] = apply_epilogue(acc, r, p, ep);
      }
    }
  }
}

void dwconv_ref(const DwShape& s, const float* x, const float* w, float bias, float lo,
                float hi, float* y) {
  for (int oy = 0; oy < s.OH; ++oy) {
    for (int ox = 0; ox < s.OW; ++ox) {
      float acc = bias;
      for (int ky = 0; ky < s.k; ++ky) {
        const int iy = oy * s.stride - s.pad_t + ky;
        if (iy < 0 || iy >= s.H) continue;
        for (int kx = 0; kx < s.k; ++kx) {
          const int ix = ox * s.stride - s.pad_l + kx;
          if (ix < 0 || ix >= s.W) continue;
          acc += w[ky * s.k + kx] * x[iy * s.W + ix];
        }
      }
      acc = acc < lo ? lo : acc;
      y[oy * s.OW + ox] = acc > hi ? hi : acc;
    }
  }
}

void dwconv_multi_ref(const DwShape& s, int nch, const float* x, const float* w,
                      const float* bias, float lo, float hi, float* y) {
  const ptrdiff_t plane = static_cast<ptrdiff_t>(s.H) * s.W;
  const ptrdiff_t oplane = static_cast<ptrdiff_t>(s.OH) * s.OW;
  for (int c = 0; c < nch; ++c)
    dwconv_ref(s, x + c * plane, w + static_cast<ptrdiff_t>(c) * s.k * s.k, bias[c], lo, hi,
               y + c * oplane);
}

constexpr KernelTable make_table() {
  KernelTable t{};
  t.isa = Isa::ref;
  t.name = "ref";
  t.tile_pixels = 1;
  t.spmm_b1 = spmm_ref;
  t.spmm_b4 = spmm_ref;
  t.dwconv = dwconv_ref;
  t.spmv_lanes = 8;
  t.spmv_bank = spmv_bank_ref;
  t.dwconv_multi = dwconv_multi_ref;
  t.dw_multi_lanes = 1;
  t.b1_tile_pixels = 1;
  t.predict_quantize = predict_quantize_ref;
  t.predict = predict_ref;
  t.predict_units = predict_units_ref;
  t.predict_exact = predict_exact_ref;
  t.dwconv_blocked = dwconv_c8_ref;
  t.to_blocked = to_blocked_ref;
  t.from_blocked = from_blocked_ref;
  t.spmm_b4_blocked = spmm_c8_ref;
  t.spmm_b4_panel_blocked = spmm_panel_c8_ref;
  t.dense_blocked = dense_c8_ref;
  return t;
}

constexpr KernelTable kTable = make_table();

}  // namespace

const KernelTable* kernels_ref() { return &kTable; }

}  // namespace sk
