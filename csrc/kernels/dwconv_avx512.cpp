// AVX-512F depthwise convolution of NCHW planes (dwconv.h; compiled with -mavx512f/vl/bw/dq):
// 16 output columns per zmm.  Stride 2 splits 32 inputs into even and odd columns with one
// vpermt2ps each, already in order.  Partial rows by mask registers (masked loads never touch
// masked-off lanes; vexpandps at the left border); dwconv_multi on 16 channels per vector
// through 16x16 butterfly transposes.
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_ps() through, which -Wmaybe-uninitialized
// reports as a false positive at every use of _mm512_max_ps/_mm512_min_ps.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/x86_intrinsics.h"

#include "kernels/dwconv.h"
#include "kernels/isa_parts.h"
#include "kernels/x86_zmm.h"

namespace sk {
namespace {

struct Avx512Dw : Zmm {  // fma(w, v, acc) = w * v + acc on a broadcast tap
  using Wt = __m512;
  struct Pair {
    __m512 lo, hi;
  };
  static constexpr bool kShortRing = false;
  static constexpr bool kWholeTailStores = false;
  static constexpr bool kMulti = true;

  static T load_shifted(const float* p, int sh, int m) {  // expand p[0 .. m) into lanes sh ..
    return _mm512_maskz_expandloadu_ps(static_cast<__mmask16>(mask(m) << sh), p);
  }
  static Wt weight(const float* p) { return _mm512_set1_ps(*p); }

  static Pair load2(const float* row, int i) { return {load(row + i), load(row + i + 16)}; }
  static Pair pair(T lo, T hi) { return {lo, hi}; }
  static T even(const Pair& p) {
    const __m512i idx =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(p.lo, idx, p.hi);
  }
  static T odd(const Pair& p) {
    const __m512i idx =
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    return _mm512_permutex2var_ps(p.lo, idx, p.hi);
  }
  static T s2_order(T v) { return v; }

  static T gather(const float* p, int stride, int m) {
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_set1_epi32(stride),
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask(m), idx, p, 4);
  }
  // Butterfly transpose of a 16x16 block held as 16 rows: stage h swaps bit h of the row
  // index with bit h of the column index; the four stages together swap all bits.
  struct Transpose {
    __m512i a[4], b[4];
    Transpose() {
      for (int st = 0; st < 4; ++st) {
        const int h = 8 >> st;
        alignas(64) int ia[16], ib[16];
        for (int c = 0; c < 16; ++c) {
          ia[c] = (c & h) ? 16 + c - h : c;
          ib[c] = (c & h) ? 16 + c : c + h;
        }
        a[st] = _mm512_load_si512(ia);
        b[st] = _mm512_load_si512(ib);
      }
    }
    inline __attribute__((always_inline)) void operator()(T (&r)[16]) const {
      _Pragma("GCC unroll 4") for (int st = 0; st < 4; ++st) {
        const int h = 8 >> st;
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; ++i) {
          if (i & h) continue;
          const __m512 x = r[i], y = r[i + h];
          r[i] = _mm512_permutex2var_ps(x, a[st], y);
          r[i + h] = _mm512_permutex2var_ps(x, b[st], y);
        }
      }
    }
  };
};

}  // namespace

void dwconv_avx512(const DwShape& s, const float* x, const float* w, float bias, float lo,
                   float hi, float* y) {
  DwConv<Avx512Dw>::plane(s, x, w, bias, lo, hi, y);
}

void dwconv_multi_avx512(const DwShape& s, int nch, const float* x, const float* w,
                         const float* bias, float lo, float hi, float* y) {
  DwConv<Avx512Dw>::multi(s, nch, x, w, bias, lo, hi, y);
}

}  // namespace sk
