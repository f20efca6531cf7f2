// AVX2+FMA depthwise convolution on 8-channel blocks (dwconv_blocked.h): one ymm per pixel,
// tiles of 8 output pixels (8 accumulators + a weight register of the 16); and the layout
// changes of one block (NCHW planes <-> NCHWc8) by 8x8 transposes in registers.
#include <immintrin.h>

#include "kernels/dwconv_blocked.h"
#include "kernels/isa_parts.h"
#include "kernels/x86_ymm.h"

namespace sk {
namespace {

struct Avx2C8 : Ymm {
  static constexpr int kStrip = 8;
  // 14-wide rows measured faster one block per tile (672x14x14 5x5: 0.107 vs 0.115 ms),
  // 7-wide rows two (1152x7x7 5x5: 0.056 vs 0.062)
  static constexpr int kPairMaxWidth = 8;
};

}  // namespace

// 8 pixels at a time: the block's channel rows (zero past `lanes`) transposed into 8 pixel
// blocks; the last n % 8 pixels element by element.  (Scalar loops ran at ~14 GB/s on a
// 1.6 MB tensor, far below memory speed.)
void to_blocked_avx2(const float* x, ptrdiff_t plane, int lanes, size_t n, float* y) {
  constexpr int L = kChannelBlock;
  size_t p = 0;
  for (; p + 8 <= n; p += 8) {
    __m256 r[8];
    for (int l = 0; l < L; ++l)
      r[l] = l < lanes ? _mm256_loadu_ps(x + l * plane + static_cast<ptrdiff_t>(p))
                       : _mm256_setzero_ps();
    transpose8(r);
    for (int j = 0; j < L; ++j) _mm256_storeu_ps(y + (p + j) * L, r[j]);
  }
  for (; p < n; ++p)
    for (int l = 0; l < L; ++l)
      y[p * L + l] = l < lanes ? x[l * plane + static_cast<ptrdiff_t>(p)] : 0.0f;
}

void from_blocked_avx2(const float* x, int lanes, size_t n, float* y, ptrdiff_t plane) {
  constexpr int L = kChannelBlock;
  size_t p = 0;
  for (; p + 8 <= n; p += 8) {
    __m256 r[8];
    for (int j = 0; j < L; ++j) r[j] = _mm256_loadu_ps(x + (p + j) * L);
    transpose8(r);
    for (int l = 0; l < lanes; ++l)
      _mm256_storeu_ps(y + l * plane + static_cast<ptrdiff_t>(p), r[l]);
  }
  for (; p < n; ++p)
    for (int l = 0; l < lanes; ++l) y[l * plane + static_cast<ptrdiff_t>(p)] = x[p * L + l];
}

void dwconv_c8x8_avx2(const DwShape& s, int nblk, const float* x, const float* w,
                      const float* bias, float lo, float hi, float* y, int oy_begin,
                      int oy_end) {
  DwBlocked<Avx2C8>::conv(s, nblk, x, w, bias, lo, hi, y, oy_begin, oy_end);
}

}  // namespace sk
