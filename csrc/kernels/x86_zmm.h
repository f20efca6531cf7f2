// The 16-lane zmm vector operations the AVX-512 NCHW policies share (spmm.h, spmv.h, dwconv.h);
// each family's policy derives from Zmm and adds its tile sizes and what is its own.  Include
// x86_intrinsics.h first; internal linkage, as the templates.
#pragma once

namespace sk {
namespace {

struct Zmm {
  using T = __m512;
  static constexpr int kLanes = 16;
  static __mmask16 mask(int m) { return static_cast<__mmask16>((1u << m) - 1u); }  // m <= 16
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  // Masked loads and stores never touch masked-off lanes (the loads give 0 there).
  static T load_part(const float* p, int m) { return _mm512_maskz_loadu_ps(mask(m), p); }
  static void store_part(float* p, T v, int m) { _mm512_mask_storeu_ps(p, mask(m), v); }
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float f) { return _mm512_set1_ps(f); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
  // max(lo, v) / min(hi, v) return v when it is NaN, like the reference.
  static T clamp(T v, T lo, T hi) { return _mm512_min_ps(hi, _mm512_max_ps(lo, v)); }
  // The two 8-float halves (two channel blocks side by side in the blocked kernels).
  // vextractf64x4 / vinsertf64x4: AVX-512F, and in SIMDe (the emulated test build).
  static __m256 low(T v) { return _mm512_castps512_ps256(v); }
  static __m256 high(T v) {
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  }
  static T join(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(
        _mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
  }
};

// 64-bit interleaves of a and b inside each 128-bit lane (pairs of floats)
inline __attribute__((always_inline)) __m512 unpacklo_pairs(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
inline __attribute__((always_inline)) __m512 unpackhi_pairs(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

// 8 rows x 16 pixels -> 16 pixels x 8 rows, two pixels' 8-channel lines per register:
// r[k] <- (r0[2k] .. r7[2k], r0[2k+1] .. r7[2k+1]).  32 shuffles for 128 floats; the ymm
// route (two 4-row pixel-pair transposes, then joining the 128-bit halves) takes about twice
// the instructions and a round trip through memory for the first half.
inline __attribute__((always_inline)) void rows8_to_pixel_lines(__m512 (&r)[8]) {
  // t: pairs of rows interleaved inside each 128-bit lane L (pixels 4L .. 4L+3)
  const __m512 t0 = _mm512_unpacklo_ps(r[0], r[1]), t1 = _mm512_unpackhi_ps(r[0], r[1]);
  const __m512 t2 = _mm512_unpacklo_ps(r[2], r[3]), t3 = _mm512_unpackhi_ps(r[2], r[3]);
  const __m512 t4 = _mm512_unpacklo_ps(r[4], r[5]), t5 = _mm512_unpackhi_ps(r[4], r[5]);
  const __m512 t6 = _mm512_unpacklo_ps(r[6], r[7]), t7 = _mm512_unpackhi_ps(r[6], r[7]);
  // s0..s3: lane L holds rows 0-3 of pixel 4L+0 .. 4L+3; s4..s7 rows 4-7 of the same pixels
  const __m512 s[8] = {unpacklo_pairs(t0, t2), unpackhi_pairs(t0, t2),
                       unpacklo_pairs(t1, t3), unpackhi_pairs(t1, t3),
                       unpacklo_pairs(t4, t6), unpackhi_pairs(t4, t6),
                       unpacklo_pairs(t5, t7), unpackhi_pairs(t5, t7)};
  // pixels 4L+i, 4L+i+1 (i = 0, 2) are lanes L of s[i], s[i+4], s[i+1], s[i+5]
  for (int i = 0; i < 4; i += 2) {
    const __m512 u0 = _mm512_shuffle_f32x4(s[i], s[i + 4], 0x44);      // lanes 0, 1
    const __m512 u1 = _mm512_shuffle_f32x4(s[i + 1], s[i + 5], 0x44);
    const __m512 u2 = _mm512_shuffle_f32x4(s[i], s[i + 4], 0xEE);      // lanes 2, 3
    const __m512 u3 = _mm512_shuffle_f32x4(s[i + 1], s[i + 5], 0xEE);
    r[i / 2] = _mm512_shuffle_f32x4(u0, u1, 0x88);          // pixels i, i+1
    r[i / 2 + 2] = _mm512_shuffle_f32x4(u0, u1, 0xDD);      // pixels 4+i, 5+i
    r[i / 2 + 4] = _mm512_shuffle_f32x4(u2, u3, 0x88);      // pixels 8+i, 9+i
    r[i / 2 + 6] = _mm512_shuffle_f32x4(u2, u3, 0xDD);      // pixels 12+i, 13+i
  }
}

// The inverse: r[k] = the 8-channel lines of pixels 2k, 2k+1 -> r[c] = channel c of pixels
// 0 .. 15.  Gathers each 4-channel half of pixels 4L+i into lane L (two 128-bit shuffles),
// then transposes 4x4 inside the lanes.
inline __attribute__((always_inline)) void pixel_lines_to_rows8(__m512 (&r)[8]) {
  __m512 q[2][4];  // q[h][i] lane L: channels 4h .. 4h+3 of pixel 4L+i
  for (int j = 0; j < 2; ++j) {
    const __m512 a = _mm512_shuffle_f32x4(r[j], r[j + 2], 0x44);      // pixels 2j, 2j+4
    const __m512 b = _mm512_shuffle_f32x4(r[j], r[j + 2], 0xEE);      // 2j+1, 2j+5
    const __m512 c = _mm512_shuffle_f32x4(r[j + 4], r[j + 6], 0x44);  // 2j+8, 2j+12
    const __m512 d = _mm512_shuffle_f32x4(r[j + 4], r[j + 6], 0xEE);  // 2j+9, 2j+13
    q[0][2 * j] = _mm512_shuffle_f32x4(a, c, 0x88);
    q[1][2 * j] = _mm512_shuffle_f32x4(a, c, 0xDD);
    q[0][2 * j + 1] = _mm512_shuffle_f32x4(b, d, 0x88);
    q[1][2 * j + 1] = _mm512_shuffle_f32x4(b, d, 0xDD);
  }
  for (int h = 0; h < 2; ++h) {
    const __m512 t0 = _mm512_unpacklo_ps(q[h][0], q[h][1]), t1 = _mm512_unpackhi_ps(q[h][0], q[h][1]);
    const __m512 t2 = _mm512_unpacklo_ps(q[h][2], q[h][3]), t3 = _mm512_unpackhi_ps(q[h][2], q[h][3]);
    r[4 * h] = unpacklo_pairs(t0, t2);
    r[4 * h + 1] = unpackhi_pairs(t0, t2);
    r[4 * h + 2] = unpacklo_pairs(t1, t3);
    r[4 * h + 3] = unpackhi_pairs(t1, t3);
  }
}

}  // namespace
}  // namespace sk
