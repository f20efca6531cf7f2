// 8x8 float transpose in ymm registers, shared by the AVX2 and AVX-512 channel-block files
// (internal linkage: each ISA file compiles its own copy with its own flags).  Include the
// intrinsics (immintrin.h or x86_intrinsics.h) first.
#pragma once

namespace sk {
namespace {

// r[i] lane j <- r[j] lane i.
inline __attribute__((always_inline)) void transpose8(__m256 (&r)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// 4 rows x 8 pixels -> pixel pairs: u[i] = (r0[i], r1[i], r2[i], r3[i] | r0[i+4] .. r3[i+4]),
// i < 4.  A 4x4 transpose inside each 128-bit lane.
inline __attribute__((always_inline)) void rows4_to_pixel_pairs(const __m256 (&r)[4],
                                                                __m256 (&u)[4]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  u[0] = _mm256_shuffle_ps(t0, t2, 0x44), u[1] = _mm256_shuffle_ps(t0, t2, 0xEE);
  u[2] = _mm256_shuffle_ps(t1, t3, 0x44), u[3] = _mm256_shuffle_ps(t1, t3, 0xEE);
}

// 4 rows x 8 pixels -> 8 pixels x 4 rows: px[i] = (r0[i], r1[i], r2[i], r3[i]).
inline __attribute__((always_inline)) void rows4_to_pixels(const __m256 (&r)[4],
                                                           __m128 (&px)[8]) {
  __m256 u[4];
  rows4_to_pixel_pairs(r, u);
  for (int i = 0; i < 4; ++i) {
    px[i] = _mm256_castps256_ps128(u[i]);
    px[i + 4] = _mm256_extractf128_ps(u[i], 1);
  }
}

}  // namespace
}  // namespace sk
