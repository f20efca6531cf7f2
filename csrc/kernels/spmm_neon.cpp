// aarch64 NEON sparse x dense kernels (Advanced SIMD is baseline on aarch64).
//
//   spmm_16x4_neon: B = 4.  16 pixels x 4 rows = 16 q-register accumulators; per nonzero block
//                   4 loads of X, one load of the block's 4 weights, 16 lane-indexed FMAs
//                   (vfmaq_laneq_f32).  Remainders 8x4, 4x4, then a 1..3-pixel tail.
//   spmm_16x1_neon: B = 1.  16 pixels x 1 row, blocks two at a time into two sets of 4
//                   accumulators.  Remainders 8, 4, tail.
// The 1..3-pixel tails go through a 4-float stack buffer (NEON has no masked loads), so no
// lane past the end of X, Y or the residual is read or written.  Epilogue as the x86
// kernels: bias initialises the accumulators; (+ residual), clamp, (+ residual after act).
// No alignment is assumed.
#include <arm_neon.h>

#include "kernels/isa_parts.h"
#include "kernels/kernels.h"

namespace sk {
namespace {

constexpr size_t kChunk = 960;  // pixels per chunk (multiple of 16), as on x86

// m (1..4) floats from p, zero-filled to 4 lanes; reads only p[0 .. m).
template <bool PARTIAL>
inline float32x4_t load4(const float* p, int m) {
  if (!PARTIAL) return vld1q_f32(p);
  float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int i = 0; i < m; ++i) t[i] = p[i];
  return vld1q_f32(t);
}

template <bool PARTIAL>
inline void store4(float* p, float32x4_t v, int m) {
  if (!PARTIAL) return vst1q_f32(p, v);
  float t[4];
  vst1q_f32(t, v);
  for (int i = 0; i < m; ++i) p[i] = t[i];
}

template <bool PARTIAL>
inline void store_out(float* dst, float32x4_t acc, const float* res, bool res_after,
                      float32x4_t lo, float32x4_t hi, int m) {
  float32x4_t r = vdupq_n_f32(0.0f);
  if (res) r = load4<PARTIAL>(res, m);
  if (res && !res_after) acc = vaddq_f32(acc, r);
  acc = vmaxq_f32(lo, acc);
  acc = vminq_f32(hi, acc);
  if (res && res_after) acc = vaddq_f32(acc, r);
  store4<PARTIAL>(dst, acc, m);
}

// NV*4 pixels x 4 rows at pixel p; PARTIAL (NV == 1): only m < 4 pixels.
template <int NV, bool PARTIAL>
__attribute__((always_inline)) inline void tile_b4(size_t p, const float* x,
                                                   const int32_t* off, const float* val,
                                                   int32_t j0, int32_t j1, int r0, int nr,
                                                   float* y, ptrdiff_t ys, const Epilogue& ep,
                                                   float32x4_t lo, float32x4_t hi, int m) {
  float32x4_t acc[4][NV];
  _Pragma("GCC unroll 8") for (int b = 0; b < 4; ++b) {
    const float32x4_t init = vdupq_n_f32((ep.bias && b < nr) ? ep.bias[r0 + b] : 0.0f);
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) acc[b][v] = init;
  }
  const float* xp = x + p;
  for (int32_t j = j0; j < j1; ++j) {
    const float* xr = xp + off[j];
    float32x4_t xv[NV];
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) xv[v] = load4<PARTIAL>(xr + 4 * v, m);
    const float32x4_t wj = vld1q_f32(val + 4 * static_cast<size_t>(j));
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
      acc[0][v] = vfmaq_laneq_f32(acc[0][v], xv[v], wj, 0);
      acc[1][v] = vfmaq_laneq_f32(acc[1][v], xv[v], wj, 1);
      acc[2][v] = vfmaq_laneq_f32(acc[2][v], xv[v], wj, 2);
      acc[3][v] = vfmaq_laneq_f32(acc[3][v], xv[v], wj, 3);
    }
  }
  _Pragma("GCC unroll 8") for (int b = 0; b < 4; ++b) {
    if (b >= nr) break;
    const int r = r0 + b;
    float* yr = y + r * ys + p;
    const float* rr = ep.residual ? ep.residual + r * ep.residual_stride + p : nullptr;
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
      store_out<PARTIAL>(yr + 4 * v, acc[b][v], rr ? rr + 4 * v : nullptr,
                         ep.residual_after_act, lo, hi, m);
  }
}

void spmm_16x4_neon(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                    float* y, ptrdiff_t y_stride, const Epilogue& ep) {
  const float32x4_t lo = vdupq_n_f32(ep.lo), hi = vdupq_n_f32(ep.hi);
  for (size_t pc = 0; pc < n; pc += kChunk) {
    const size_t pe = n - pc < kChunk ? n : pc + kChunk;
    for (int g = g_begin; g < g_end; ++g) {
      const int32_t j0 = w.group_ptr[g], j1 = w.group_ptr[g + 1];
      const int r0 = g * 4;
      const int nr = w.rows - r0 < 4 ? w.rows - r0 : 4;
      const int32_t* off = w.x_offset;
      const float* val = w.values;
      size_t p = pc;
      for (; p + 16 <= pe; p += 16)
        tile_b4<4, false>(p, x, off, val, j0, j1, r0, nr, y, y_stride, ep, lo, hi, 4);
      if (p + 8 <= pe) {
        tile_b4<2, false>(p, x, off, val, j0, j1, r0, nr, y, y_stride, ep, lo, hi, 4);
        p += 8;
      }
      if (p + 4 <= pe) {
        tile_b4<1, false>(p, x, off, val, j0, j1, r0, nr, y, y_stride, ep, lo, hi, 4);
        p += 4;
      }
      if (p < pe)
        tile_b4<1, true>(p, x, off, val, j0, j1, r0, nr, y, y_stride, ep, lo, hi,
                         static_cast<int>(pe - p));
    }
  }
}

template <int NV, bool PARTIAL>
__attribute__((always_inline)) inline void tile_b1(size_t p, const float* x,
                                                   const int32_t* off, const float* val,
                                                   int32_t j0, int32_t j1, int r, float* y,
                                                   ptrdiff_t ys, const Epilogue& ep,
                                                   float32x4_t lo, float32x4_t hi, int m) {
  float32x4_t a[NV], c[NV];
  const float32x4_t init = vdupq_n_f32(ep.bias ? ep.bias[r] : 0.0f);
  _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
    a[v] = init;
    c[v] = vdupq_n_f32(0.0f);
  }
  const float* xp = x + p;
  int32_t j = j0;
  for (; j + 2 <= j1; j += 2) {
    const float* xa = xp + off[j];
    const float* xc = xp + off[j + 1];
    const float wa = val[j], wc = val[j + 1];
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
      a[v] = vfmaq_n_f32(a[v], load4<PARTIAL>(xa + 4 * v, m), wa);
      c[v] = vfmaq_n_f32(c[v], load4<PARTIAL>(xc + 4 * v, m), wc);
    }
  }
  if (j < j1) {
    const float* xa = xp + off[j];
    const float wa = val[j];
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
      a[v] = vfmaq_n_f32(a[v], load4<PARTIAL>(xa + 4 * v, m), wa);
  }
  float* yr = y + r * ys + p;
  const float* rr = ep.residual ? ep.residual + r * ep.residual_stride + p : nullptr;
  _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
    store_out<PARTIAL>(yr + 4 * v, vaddq_f32(a[v], c[v]), rr ? rr + 4 * v : nullptr,
                       ep.residual_after_act, lo, hi, m);
}

void spmm_16x1_neon(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                    float* y, ptrdiff_t y_stride, const Epilogue& ep) {
  const float32x4_t lo = vdupq_n_f32(ep.lo), hi = vdupq_n_f32(ep.hi);
  for (size_t pc = 0; pc < n; pc += kChunk) {
    const size_t pe = n - pc < kChunk ? n : pc + kChunk;
    for (int g = g_begin; g < g_end; ++g) {
      const int32_t j0 = w.group_ptr[g], j1 = w.group_ptr[g + 1];
      const int32_t* off = w.x_offset;
      const float* val = w.values;
      size_t p = pc;
      for (; p + 16 <= pe; p += 16)
        tile_b1<4, false>(p, x, off, val, j0, j1, g, y, y_stride, ep, lo, hi, 4);
      if (p + 8 <= pe) {
        tile_b1<2, false>(p, x, off, val, j0, j1, g, y, y_stride, ep, lo, hi, 4);
        p += 8;
      }
      if (p + 4 <= pe) {
        tile_b1<1, false>(p, x, off, val, j0, j1, g, y, y_stride, ep, lo, hi, 4);
        p += 4;
      }
      if (p < pe)
        tile_b1<1, true>(p, x, off, val, j0, j1, g, y, y_stride, ep, lo, hi,
                         static_cast<int>(pe - p));
    }
  }
}

constexpr KernelTable make_table() {
  KernelTable t{};
  t.isa = Isa::neon;
  t.name = "neon";
  t.tile_pixels = 16;
  t.spmm_b1 = spmm_16x1_neon;
  t.spmm_b4 = spmm_16x4_neon;
  t.dwconv = dwconv_neon;
  t.spmv_lanes = 4;
  t.spmv_bank = spmv_bank_neon;
  t.dwconv_multi = dwconv_multi_neon;
  t.dw_multi_lanes = 1;
  t.b1_tile_pixels = 16;
  t.predict_quantize = predict_quantize_neon;
  t.predict = predict_neon;
  t.predict_units = predict_units_ref;
  t.predict_exact = predict_exact_ref;
  t.dwconv_blocked = dwconv_c8x8_neon;
  t.to_blocked = to_blocked_ref;
  t.from_blocked = from_blocked_ref;
  t.spmm_b4_blocked = spmm_c8_16x4_neon;
  t.spmm_b4_panel_blocked = spmm_panel_c8_16x4_neon;
  return t;
}

constexpr KernelTable kTable = make_table();

}  // namespace

const KernelTable* kernels_neon() { return &kTable; }

}  // namespace sk
