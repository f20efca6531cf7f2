// AVX-512F sparse x dense kernels (compiled with -mavx512f/vl/bw/dq; chosen by cpuid).
//
//   spmm_48x4_avx512: B = 4.  48 pixels x 4 rows = 12 zmm accumulators; per nonzero block
//                     3 loads of X, 4 broadcasts, 12 FMAs.  Remainders 32x4, 16x4 and a
//                     masked 1..15 x4 tail (__mmask16 loads/stores: lanes past the tail are
//                     never read or written).
//   spmm_32x1_avx512: B = 1.  32 pixels x 1 row, blocks two at a time into two sets of 2
//                     accumulators, summed at the end.  Remainders 16, masked tail.  (64
//                     pixels measured no faster: unstructured rows are load/L2-bound.)
// Same structure and epilogue as the AVX2 kernels (see spmm_avx2.cpp); no alignment assumed.
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_ps() through, which -Wmaybe-uninitialized
// reports as a false positive at every use of _mm512_max_ps/_mm512_min_ps.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/x86_intrinsics.h"

#include "kernels/isa_parts.h"
#include "kernels/kernels.h"

namespace sk {
namespace {

constexpr size_t kChunk = 960;  // pixels per chunk (as AVX2); a multiple of 48 and 32

inline __mmask16 tail_mask(size_t m) { return static_cast<__mmask16>((1u << m) - 1u); }

template <bool MASKED>
__attribute__((always_inline)) inline __m512 load16(const float* p, __mmask16 m) {
  return MASKED ? _mm512_maskz_loadu_ps(m, p) : _mm512_loadu_ps(p);
}

// Epilogue on one vector, then store (MASKED: only the lanes in m).
template <bool MASKED>
__attribute__((always_inline)) inline void store_out(float* dst, __m512 acc, const float* res,
                                                     bool res_after, __m512 lo, __m512 hi,
                                                     __mmask16 m) {
  __m512 r = _mm512_setzero_ps();
  if (res) r = load16<MASKED>(res, m);
  if (res && !res_after) acc = _mm512_add_ps(acc, r);
  // max(lo, acc) / min(hi, acc) return acc when it is NaN, like the reference.
  acc = _mm512_max_ps(lo, acc);
  acc = _mm512_min_ps(hi, acc);
  if (res && res_after) acc = _mm512_add_ps(acc, r);
  if (MASKED)
    _mm512_mask_storeu_ps(dst, m, acc);
  else
    _mm512_storeu_ps(dst, acc);
}

// One register tile of NV*16 pixels (NV = 3, 2, 1) x 4 rows at pixel p.
template <int NV, bool MASKED>
__attribute__((always_inline)) inline void tile_b4(size_t p, const float* x,
                                                   const int32_t* off, const float* val,
                                                   int32_t j0, int32_t j1, int r0, int nr,
                                                   float* y, ptrdiff_t ys, const Epilogue& ep,
                                                   __m512 lo, __m512 hi, __mmask16 m) {
  __m512 acc[4][NV];
  _Pragma("GCC unroll 8") for (int b = 0; b < 4; ++b) {
    const __m512 init =
        (ep.bias && b < nr) ? _mm512_set1_ps(ep.bias[r0 + b]) : _mm512_setzero_ps();
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) acc[b][v] = init;
  }
  const float* xp = x + p;
  for (int32_t j = j0; j < j1; ++j) {
    const float* xr = xp + off[j];
    __m512 xv[NV];
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) xv[v] = load16<MASKED>(xr + 16 * v, m);
    const float* wj = val + 4 * static_cast<size_t>(j);
    _Pragma("GCC unroll 8") for (int b = 0; b < 4; ++b) {
      const __m512 wb = _mm512_set1_ps(wj[b]);
      _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
        acc[b][v] = _mm512_fmadd_ps(wb, xv[v], acc[b][v]);
    }
  }
  // b stays a compile-time index after unrolling (a run-time bound would spill acc)
  _Pragma("GCC unroll 8") for (int b = 0; b < 4; ++b) {
    if (b >= nr) break;
    const int r = r0 + b;
    float* yr = y + r * ys + p;
    const float* rr = ep.residual ? ep.residual + r * ep.residual_stride + p : nullptr;
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
      store_out<MASKED>(yr + 16 * v, acc[b][v], rr ? rr + 16 * v : nullptr,
                        ep.residual_after_act, lo, hi, m);
  }
}

void spmm_48x4_avx512(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                      float* y, ptrdiff_t y_stride, const Epilogue& ep) {
  const __m512 lo = _mm512_set1_ps(ep.lo), hi = _mm512_set1_ps(ep.hi);
  const __mmask16 all = 0xFFFF;
  for (size_t pc = 0; pc < n; pc += kChunk) {
    const size_t pe = n - pc < kChunk ? n : pc + kChunk;
    for (int g = g_begin; g < g_end; ++g) {
      const int32_t j0 = w.group_ptr[g], j1 = w.group_ptr[g + 1];
      const int r0 = g * 4;
      const int nr = w.rows - r0 < 4 ? w.rows - r0 : 4;
      const int32_t* off = w.x_offset;
      const float* val = w.values;
      size_t p = pc;
      for (; p + 48 <= pe; p += 48)
        tile_b4<3, false>(p, x, off, val, j0, j1, r0, nr, y, y_stride, ep, lo, hi, all);
      if (p + 32 <= pe) {
        tile_b4<2, false>(p, x, off, val, j0, j1, r0, nr, y, y_stride, ep, lo, hi, all);
        p += 32;
      }
      if (p + 16 <= pe) {
        tile_b4<1, false>(p, x, off, val, j0, j1, r0, nr, y, y_stride, ep, lo, hi, all);
        p += 16;
      }
      if (p < pe)
        tile_b4<1, true>(p, x, off, val, j0, j1, r0, nr, y, y_stride, ep, lo, hi,
                         tail_mask(pe - p));
    }
  }
}

// One tile of NV*16 pixels x 1 row; two accumulator sets (even/odd blocks).
template <int NV, bool MASKED>
__attribute__((always_inline)) inline void tile_b1(size_t p, const float* x,
                                                   const int32_t* off, const float* val,
                                                   int32_t j0, int32_t j1, int r, float* y,
                                                   ptrdiff_t ys, const Epilogue& ep, __m512 lo,
                                                   __m512 hi, __mmask16 m) {
  __m512 a[NV], c[NV];
  const __m512 init = ep.bias ? _mm512_set1_ps(ep.bias[r]) : _mm512_setzero_ps();
  _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
    a[v] = init;
    c[v] = _mm512_setzero_ps();
  }
  const float* xp = x + p;
  int32_t j = j0;
  for (; j + 2 <= j1; j += 2) {
    const float* xa = xp + off[j];
    const float* xc = xp + off[j + 1];
    const __m512 wa = _mm512_set1_ps(val[j]);
    const __m512 wc = _mm512_set1_ps(val[j + 1]);
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
      a[v] = _mm512_fmadd_ps(wa, load16<MASKED>(xa + 16 * v, m), a[v]);
      c[v] = _mm512_fmadd_ps(wc, load16<MASKED>(xc + 16 * v, m), c[v]);
    }
  }
  if (j < j1) {
    const float* xa = xp + off[j];
    const __m512 wa = _mm512_set1_ps(val[j]);
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
      a[v] = _mm512_fmadd_ps(wa, load16<MASKED>(xa + 16 * v, m), a[v]);
  }
  float* yr = y + r * ys + p;
  const float* rr = ep.residual ? ep.residual + r * ep.residual_stride + p : nullptr;
  _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
    store_out<MASKED>(yr + 16 * v, _mm512_add_ps(a[v], c[v]), rr ? rr + 16 * v : nullptr,
                      ep.residual_after_act, lo, hi, m);
}

void spmm_32x1_avx512(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                      float* y, ptrdiff_t y_stride, const Epilogue& ep) {
  const __m512 lo = _mm512_set1_ps(ep.lo), hi = _mm512_set1_ps(ep.hi);
  const __mmask16 all = 0xFFFF;
  for (size_t pc = 0; pc < n; pc += kChunk) {
    const size_t pe = n - pc < kChunk ? n : pc + kChunk;
    for (int g = g_begin; g < g_end; ++g) {
      const int32_t j0 = w.group_ptr[g], j1 = w.group_ptr[g + 1];
      const int32_t* off = w.x_offset;
      const float* val = w.values;
      size_t p = pc;
      for (; p + 32 <= pe; p += 32)
        tile_b1<2, false>(p, x, off, val, j0, j1, g, y, y_stride, ep, lo, hi, all);
      if (p + 16 <= pe) {
        tile_b1<1, false>(p, x, off, val, j0, j1, g, y, y_stride, ep, lo, hi, all);
        p += 16;
      }
      if (p < pe)
        tile_b1<1, true>(p, x, off, val, j0, j1, g, y, y_stride, ep, lo, hi, tail_mask(pe - p));
    }
  }
}

// The prediction is vpdpbusd's where the CPU has VNNI (Cascade Lake, Ice Lake and later, Zen 4),
// else the AVX2 kernel's (Skylake-SP has AVX-512 but no VNNI).
constexpr KernelTable make_table(bool vnni) {
  KernelTable t{};
  t.isa = Isa::avx512;
  t.name = "avx512";
  t.tile_pixels = 48;
  t.spmm_b1 = spmm_32x1_avx512;
  t.spmm_b4 = spmm_48x4_avx512;
  t.dwconv = dwconv_avx512;
  t.spmv_lanes = 16;
  t.spmv_bank = spmv_bank_avx512;
  t.dwconv_multi = dwconv_multi_avx512;
  t.dw_multi_lanes = 16;
  t.b1_tile_pixels = 32;
  t.predict_quantize = predict_quantize_avx2;
  t.predict = vnni ? predict_avx512vnni : predict_avx2;
  t.predict_units = vnni ? predict_units_avx512vnni : predict_units_avx2;
  t.predict_exact = predict_exact_avx2;
  t.dwconv_blocked = dwconv_c8x12_avx512;
  t.to_blocked = to_blocked_avx2;
  t.from_blocked = from_blocked_avx2;
  t.spmm_b4_blocked = spmm_c8_32x4_avx512;
  t.spmm_b4_panel_blocked = spmm_panel_c8_32x4_avx512;
  return t;
}

constexpr KernelTable kTable = make_table(false);
constexpr KernelTable kTableVnni = make_table(true);

}  // namespace

const KernelTable* kernels_avx512() { return cpu_has_avx512vnni() ? &kTableVnni : &kTable; }

}  // namespace sk
