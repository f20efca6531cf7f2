// The 8-lane ymm vector operations every AVX2 policy and the AVX-512 channel-block policies
// share (the AVX-512 channel-block kernels run on ymm registers too, one 8-channel block per
// vector): each kernel family's policy derives from Ymm and adds its tile sizes and what is its
// own (spmm.h, spmv.h, dwconv.h, spmm_blocked.h, dwconv_blocked.h).  Include the intrinsics (immintrin.h or x86_intrinsics.h)
// first; internal linkage, so each ISA file compiles its own copy with its own flags.
#pragma once

#include <cstdint>

#include "kernels/x86_transpose.h"

namespace sk {
namespace {

// kTailMask8 + 8 - m: the first m lanes all-ones, the rest zero (m in 0..8).
alignas(32) const int32_t kTailMask8[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                           0,  0,  0,  0,  0,  0,  0,  0};

struct Ymm {
  using T = __m256;  // 8 floats: a channel block, or one row over 8 pixels
  using H = __m128;  // 4 floats: one pixel's 4 rows of a 1x4 group
  static constexpr int kLanes = 8;
  static __m256i mask(int m) {  // the first m lanes
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMask8 + 8 - m));
  }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  // vmaskmovps: lanes past m are neither read nor written (the loads give 0 there)
  static T load_part(const float* p, int m) { return _mm256_maskload_ps(p, mask(m)); }
  static void store_part(float* p, T v, int m) { _mm256_maskstore_ps(p, mask(m), v); }
  static T wload(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float f) { return _mm256_set1_ps(f); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  // max(lo, v) returns v when v is NaN (second operand), and so does min(hi, NaN)
  static T clamp(T v, T lo, T hi) { return _mm256_min_ps(hi, _mm256_max_ps(lo, v)); }
  static void transpose8(T (&r)[8]) { sk::transpose8(r); }
  static void rows_to_pixels(const T (&r)[4], H (&px)[8]) { rows4_to_pixels(r, px); }
  // u[i]: pixel i's 4 rows, then pixel i+4's (i < 4)
  static void rows_to_pairs(const T (&r)[4], T (&u)[4]) { rows4_to_pixel_pairs(r, u); }
  // pixel i's full 8-channel line from the pairs of groups a (low 4) and b (high 4)
  static T line_lo(T ua, T ub) { return _mm256_permute2f128_ps(ua, ub, 0x20); }  // i < 4
  static T line_hi(T ua, T ub) { return _mm256_permute2f128_ps(ua, ub, 0x31); }  // i + 4
  static H hload(const float* p) { return _mm_loadu_ps(p); }
  static void hstore(float* p, H v) { _mm_storeu_ps(p, v); }
  static H hadd(H a, H b) { return _mm_add_ps(a, b); }
  static H hclamp(H v, H lo, H hi) { return _mm_min_ps(hi, _mm_max_ps(lo, v)); }
  static H hset1(float f) { return _mm_set1_ps(f); }
};

}  // namespace
}  // namespace sk
