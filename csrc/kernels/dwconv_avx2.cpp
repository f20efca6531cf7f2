// AVX2+FMA depthwise convolution of NCHW planes (dwconv.h; compiled with -mavx2 -mfma): 8 output
// columns per ymm.  Stride 2 splits 16 inputs into even and odd columns with one vshufps each;
// the lane order that leaves ([0 1 4 5 2 3 6 7]) is the same for every tap, so one vpermpd per
// output vector undoes it.  Partial rows by vmaskmovps (plus a lane shift at the left border);
// dwconv_multi on 8 channels per vector through 8x8 transposes.
#include <immintrin.h>

#include "kernels/dwconv.h"
#include "kernels/isa_parts.h"
#include "kernels/x86_ymm.h"

namespace sk {
namespace {

struct Avx2Dw : Ymm {  // fma(w, v, acc) = w * v + acc on a broadcast tap
  using Wt = __m256;
  struct Pair {
    __m256 lo, hi;
  };
  // A 112x112 plane (54 KiB) in the ring would evict L1.  Zen3, 3x3, all channels: 32x112x112
  // 0.186 -> 0.172-0.177 ms, 64x112x112 s2 0.201 -> 0.166-0.168, 96x112x112 s2 0.297 -> 0.253,
  // 128x56x56 0.196 -> 0.184.
  static constexpr bool kShortRing = true;
  static constexpr bool kWholeTailStores = true;  // vmaskmovps stores are slow
  static constexpr bool kMulti = true;

  static T load_shifted(const float* p, int sh, int m) {
    const __m256 v = load_part(p, m);  // v[j] = p[j], j < m
    const __m256i idx =
        _mm256_sub_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(sh));
    const __m256 moved = _mm256_permutevar8x32_ps(v, idx);  // lane i <- v[i - sh]
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(-1)));
    return _mm256_and_ps(moved, keep);
  }
  static Wt weight(const float* p) { return _mm256_broadcast_ss(p); }

  static Pair load2(const float* row, int i) { return {load(row + i), load(row + i + 8)}; }
  static Pair pair(T lo, T hi) { return {lo, hi}; }
  // per 128-bit half: lanes [0 1 4 5 2 3 6 7] of the columns
  static T even(const Pair& p) { return _mm256_shuffle_ps(p.lo, p.hi, 0x88); }
  static T odd(const Pair& p) { return _mm256_shuffle_ps(p.lo, p.hi, 0xDD); }
  static T s2_order(T v) {
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xD8));
  }

  static T gather(const float* p, int stride, int m) {
    alignas(32) float lane[8];
    for (int c = 0; c < 8; ++c) lane[c] = c < m ? p[static_cast<ptrdiff_t>(c) * stride] : 0.0f;
    return _mm256_load_ps(lane);
  }
  struct Transpose {
    inline __attribute__((always_inline)) void operator()(T (&r)[8]) const { transpose8(r); }
  };
};

}  // namespace

void dwconv_avx2(const DwShape& s, const float* x, const float* w, float bias, float lo,
                 float hi, float* y) {
  DwConv<Avx2Dw>::plane(s, x, w, bias, lo, hi, y);
}

void dwconv_multi_avx2(const DwShape& s, int nch, const float* x, const float* w,
                       const float* bias, float lo, float hi, float* y) {
  DwConv<Avx2Dw>::multi(s, nch, x, w, bias, lo, hi, y);
}

}  // namespace sk
