// AVX2+FMA sparse x dense kernels (compiled with -mavx2 -mfma; chosen by cpuid at run time).
//
//   spmm_24x4_avx2: B = 4.  Register tile of 24 pixels x 4 rows = 12 ymm accumulators; per
//                   nonzero block 3 loads of X, 4 broadcasts of the block's weights, 12 FMAs.
//                   Remainders: 16x4, 8x4, then a masked 1..7 x4 tail (maskload/maskstore).
//   spmm_48x1_avx2: B = 1.  48 pixels x 1 row, blocks taken two at a time into two sets of
//                   6 accumulators (12 independent FMA chains), summed at the end; per block
//                   6 loads of X + 1 broadcast per 6 FMAs (unstructured is load-bound; 48
//                   measured ~10% faster than 32).  Remainders 32, 16, 8, masked tail.
// The epilogue is fused at the store: bias initialises the accumulators, then
// (+ residual), clamp to [lo, hi], (+ residual after act).
//
// Pixels are walked in chunks of kChunk: all groups of the call run over one chunk's X
// columns (kept in cache) before the next chunk.
// No alignment is assumed anywhere (unaligned loads/stores only).
#include <immintrin.h>

#include "kernels/isa_parts.h"
#include "kernels/kernels.h"

namespace sk {
namespace {

// Pixels per chunk: a multiple of both tiles (24, 48).  Measured on MobileNetV1's 1x1 layers
// at 90%: 960 was as good as or better than 24..240 and than no chunking on every shape;
// small chunks lose to branch mispredictions (a group's block count changes every tile)
// and to many short store streams.
constexpr size_t kChunk = 960;

// kTailMask + 8 - m: the first m lanes all-ones, the rest zero (m in 0..8).
alignas(32) const int32_t kTailMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                          0,  0,  0,  0,  0,  0,  0,  0};

inline __m256i tail_mask(size_t m) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMask + 8 - m));
}

// Apply the epilogue to one vector of outputs and store it (MASKED: only lanes in `mask`).
template <bool MASKED>
__attribute__((always_inline)) inline void store_out(float* dst, __m256 acc, const float* res,
                                                     bool res_after, __m256 lo, __m256 hi,
                                                     __m256i mask) {
  __m256 r = _mm256_setzero_ps();
  if (res) r = MASKED ? _mm256_maskload_ps(res, mask) : _mm256_loadu_ps(res);
  if (res && !res_after) acc = _mm256_add_ps(acc, r);
  // max(lo, acc) / min(hi, acc) keep a NaN acc, like the reference's comparisons.
  acc = _mm256_max_ps(lo, acc);
  acc = _mm256_min_ps(hi, acc);
  if (res && res_after) acc = _mm256_add_ps(acc, r);
  if (MASKED)
    _mm256_maskstore_ps(dst, mask, acc);
  else
    _mm256_storeu_ps(dst, acc);
}

// One register tile of NV*8 pixels (NV = 3, 2, 1) x 4 rows starting at pixel p.
// MASKED (NV == 1 only): lanes past `mask` are neither read nor written.
template <int NV, bool MASKED>
__attribute__((always_inline)) inline void tile_b4(size_t p, const float* x,
                                                   const int32_t* off, const float* val,
                                                   int32_t j0, int32_t j1, int r0, int nr,
                                                   float* y, ptrdiff_t ys, const Epilogue& ep,
                                                   __m256 lo, __m256 hi, __m256i mask) {
  __m256 acc[4][NV];
  _Pragma("GCC unroll 8") for (int b = 0; b < 4; ++b) {
    const __m256 init =
        (ep.bias && b < nr) ? _mm256_set1_ps(ep.bias[r0 + b]) : _mm256_setzero_ps();
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) acc[b][v] = init;
  }
  const float* xp = x + p;
  for (int32_t j = j0; j < j1; ++j) {
    const float* xr = xp + off[j];
    __m256 xv[NV];
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
      xv[v] = MASKED ? _mm256_maskload_ps(xr, mask) : _mm256_loadu_ps(xr + 8 * v);
    const float* wj = val + 4 * static_cast<size_t>(j);
    _Pragma("GCC unroll 8") for (int b = 0; b < 4; ++b) {
      const __m256 wb = _mm256_broadcast_ss(wj + b);
      _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
        acc[b][v] = _mm256_fmadd_ps(wb, xv[v], acc[b][v]);
    }
  }
  // b is a compile-time index after unrolling (a run-time bound would put acc in memory)
  _Pragma("GCC unroll 8") for (int b = 0; b < 4; ++b) {
    if (b >= nr) break;
    const int r = r0 + b;
    float* yr = y + r * ys + p;
    const float* rr = ep.residual ? ep.residual + r * ep.residual_stride + p : nullptr;
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
      store_out<MASKED>(yr + 8 * v, acc[b][v], rr ? rr + 8 * v : nullptr,
                        ep.residual_after_act, lo, hi, mask);
  }
}

void spmm_24x4_avx2(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                    float* y, ptrdiff_t y_stride, const Epilogue& ep) {
  const __m256 lo = _mm256_set1_ps(ep.lo), hi = _mm256_set1_ps(ep.hi);
  const __m256i all = _mm256_set1_epi32(-1);
  for (size_t pc = 0; pc < n; pc += kChunk) {
    const size_t pe = n - pc < kChunk ? n : pc + kChunk;
    for (int g = g_begin; g < g_end; ++g) {
      const int32_t j0 = w.group_ptr[g], j1 = w.group_ptr[g + 1];
      const int r0 = g * 4;
      const int nr = w.rows - r0 < 4 ? w.rows - r0 : 4;
      size_t p = pc;
      for (; p + 24 <= pe; p += 24)
        tile_b4<3, false>(p, x, w.x_offset, w.values, j0, j1, r0, nr, y, y_stride, ep, lo, hi,
                          all);
      if (p + 16 <= pe) {
        tile_b4<2, false>(p, x, w.x_offset, w.values, j0, j1, r0, nr, y, y_stride, ep, lo, hi,
                          all);
        p += 16;
      }
      if (p + 8 <= pe) {
        tile_b4<1, false>(p, x, w.x_offset, w.values, j0, j1, r0, nr, y, y_stride, ep, lo, hi,
                          all);
        p += 8;
      }
      if (p < pe)
        tile_b4<1, true>(p, x, w.x_offset, w.values, j0, j1, r0, nr, y, y_stride, ep, lo, hi,
                         tail_mask(pe - p));
    }
  }
}

// One tile of NV*8 pixels x 1 row.  Two accumulator sets (even/odd blocks) halve the
// FMA dependency chains; they are summed before the epilogue.
template <int NV, bool MASKED>
__attribute__((always_inline)) inline void tile_b1(size_t p, const float* x,
                                                   const int32_t* off, const float* val,
                                                   int32_t j0, int32_t j1, int r, float* y,
                                                   ptrdiff_t ys, const Epilogue& ep, __m256 lo,
                                                   __m256 hi, __m256i mask) {
  __m256 a[NV], c[NV];
  const __m256 init = ep.bias ? _mm256_set1_ps(ep.bias[r]) : _mm256_setzero_ps();
  _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
    a[v] = init;
    c[v] = _mm256_setzero_ps();
  }
  const float* xp = x + p;
  int32_t j = j0;
  for (; j + 2 <= j1; j += 2) {
    const float* xa = xp + off[j];
    const float* xc = xp + off[j + 1];
    const __m256 wa = _mm256_broadcast_ss(val + j);
    const __m256 wc = _mm256_broadcast_ss(val + j + 1);
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
      const __m256 va = MASKED ? _mm256_maskload_ps(xa, mask) : _mm256_loadu_ps(xa + 8 * v);
      const __m256 vc = MASKED ? _mm256_maskload_ps(xc, mask) : _mm256_loadu_ps(xc + 8 * v);
      a[v] = _mm256_fmadd_ps(wa, va, a[v]);
      c[v] = _mm256_fmadd_ps(wc, vc, c[v]);
    }
  }
  if (j < j1) {
    const float* xa = xp + off[j];
    const __m256 wa = _mm256_broadcast_ss(val + j);
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
      const __m256 va = MASKED ? _mm256_maskload_ps(xa, mask) : _mm256_loadu_ps(xa + 8 * v);
      a[v] = _mm256_fmadd_ps(wa, va, a[v]);
    }
  }
  float* yr = y + r * ys + p;
  const float* rr = ep.residual ? ep.residual + r * ep.residual_stride + p : nullptr;
  _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
    store_out<MASKED>(yr + 8 * v, _mm256_add_ps(a[v], c[v]), rr ? rr + 8 * v : nullptr,
                      ep.residual_after_act, lo, hi, mask);
}

void spmm_48x1_avx2(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                    float* y, ptrdiff_t y_stride, const Epilogue& ep) {
  const __m256 lo = _mm256_set1_ps(ep.lo), hi = _mm256_set1_ps(ep.hi);
  const __m256i all = _mm256_set1_epi32(-1);
  for (size_t pc = 0; pc < n; pc += kChunk) {
    const size_t pe = n - pc < kChunk ? n : pc + kChunk;
    for (int g = g_begin; g < g_end; ++g) {
      const int32_t j0 = w.group_ptr[g], j1 = w.group_ptr[g + 1];
      size_t p = pc;
      for (; p + 48 <= pe; p += 48)
        tile_b1<6, false>(p, x, w.x_offset, w.values, j0, j1, g, y, y_stride, ep, lo, hi, all);
      if (p + 32 <= pe) {
        tile_b1<4, false>(p, x, w.x_offset, w.values, j0, j1, g, y, y_stride, ep, lo, hi, all);
        p += 32;
      }
      if (p + 16 <= pe) {
        tile_b1<2, false>(p, x, w.x_offset, w.values, j0, j1, g, y, y_stride, ep, lo, hi, all);
        p += 16;
      }
      if (p + 8 <= pe) {
        tile_b1<1, false>(p, x, w.x_offset, w.values, j0, j1, g, y, y_stride, ep, lo, hi, all);
        p += 8;
      }
      if (p < pe)
        tile_b1<1, true>(p, x, w.x_offset, w.values, j0, j1, g, y, y_stride, ep, lo, hi,
                         tail_mask(pe - p));
    }
  }
}

constexpr KernelTable make_table() {
  KernelTable t{};
  t.isa = Isa::avx2;
  t.name = "avx2";
  t.tile_pixels = 24;
  t.spmm_b1 = spmm_48x1_avx2;
  t.spmm_b4 = spmm_24x4_avx2;
  t.dwconv = dwconv_avx2;
  t.spmv_lanes = 8;
  t.spmv_bank = spmv_bank_avx2;
  t.dwconv_multi = dwconv_multi_avx2;
  t.dw_multi_lanes = 8;
  t.b1_tile_pixels = 48;
  t.predict_quantize = predict_quantize_avx2;
  t.predict = predict_avx2;
  t.predict_units = predict_units_avx2;
  t.predict_exact = predict_exact_avx2;
  t.dwconv_blocked = dwconv_c8x8_avx2;
  t.to_blocked = to_blocked_avx2;
  t.from_blocked = from_blocked_avx2;
  t.spmm_b4_blocked = spmm_c8_24x4_avx2;
  t.spmm_b4_panel_blocked = spmm_panel_c8_24x4_avx2;
  return t;
}

constexpr KernelTable kTable = make_table();

}  // namespace

const KernelTable* kernels_avx2() { return &kTable; }

}  // namespace sk
