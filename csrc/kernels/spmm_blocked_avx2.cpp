// AVX2+FMA 1x4 SpMM on 8-channel blocks (spmm_blocked.h): register tile 4 rows x 24 pixels
// (12 ymm accumulators, as spmm_24x4_avx2), X through a transposed panel, Y stored as 4-lane
// pixel halves transposed in registers.
#include <immintrin.h>

#include "kernels/isa_parts.h"
#include "kernels/spmm_blocked.h"
#include "kernels/x86_transpose.h"

namespace sk {
namespace {

struct Avx2Spmm {
  using T = __m256;
  using H = __m128;
  static constexpr int kMaxNV = 3;  // 12 accumulators + 3 X + 1 broadcast of the 16
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float f) { return _mm256_set1_ps(f); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  // max(lo, v) returns v when v is NaN (second operand), and so does min(hi, NaN)
  static T clamp(T v, T lo, T hi) { return _mm256_min_ps(hi, _mm256_max_ps(lo, v)); }
  static void transpose8(T (&r)[8]) { sk::transpose8(r); }
  static void rows_to_pixels(const T (&r)[4], H (&px)[8]) { rows4_to_pixels(r, px); }
  static H hload(const float* p) { return _mm_loadu_ps(p); }
  static void hstore(float* p, H v) { _mm_storeu_ps(p, v); }
  static H hadd(H a, H b) { return _mm_add_ps(a, b); }
  static H hclamp(H v, H lo, H hi) { return _mm_min_ps(hi, _mm_max_ps(lo, v)); }
  static H hset1(float f) { return _mm_set1_ps(f); }
};

}  // namespace

void spmm_c8_24x4_avx2(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                       ptrdiff_t x_bstride, int x_blocks, float* y, ptrdiff_t y_bstride,
                       const Epilogue& ep, float* panel, int panel_stride) {
  SpmmBlocked<Avx2Spmm>::run(n, w, g_begin, g_end, x, x_bstride, x_blocks, y, y_bstride, ep,
                             panel, panel_stride);
}

void spmm_panel_c8_24x4_avx2(size_t n, const SpMat& w, int g_begin, int g_end,
                       const float* panel, float* y, ptrdiff_t y_bstride, const Epilogue& ep) {
  SpmmBlocked<Avx2Spmm>::sweep(n, w, g_begin, g_end, panel, y, y_bstride, ep, 0);
}

}  // namespace sk
