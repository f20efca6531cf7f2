// AVX2+FMA depthwise convolution on 8-channel blocks (dwconv_blocked.h): one ymm per pixel,
// tiles of 8 output pixels (8 accumulators + a weight register of the 16).
#include <immintrin.h>

#include "kernels/dwconv_blocked.h"
#include "kernels/isa_parts.h"

namespace sk {
namespace {

struct Avx2C8 {
  using T = __m256;
  static constexpr int kStrip = 8;
  // 14-wide rows measured faster one block per tile (672x14x14 5x5: 0.107 vs 0.115 ms),
  // 7-wide rows two (1152x7x7 5x5: 0.056 vs 0.062)
  static constexpr int kPairMaxWidth = 8;
  static T wload(const float* p) { return _mm256_loadu_ps(p); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  // max(lo, v) returns v when v is NaN (second operand), and so does min(hi, NaN)
  static T clamp(T v, T lo, T hi) { return _mm256_min_ps(hi, _mm256_max_ps(lo, v)); }
  static T set1(float f) { return _mm256_set1_ps(f); }
};

}  // namespace

void dwconv_c8x8_avx2(const DwShape& s, int nblk, const float* x, const float* w,
                      const float* bias, float lo, float hi, float* y, int oy_begin,
                      int oy_end) {
  DwBlocked<Avx2C8>::conv(s, nblk, x, w, bias, lo, hi, y, oy_begin, oy_end);
}

}  // namespace sk
