// The 8-lane ymm vector policy shared by the AVX2 and AVX-512 channel-block kernels
// (spmm_blocked.h, dwconv_blocked.h): both ISAs run those on ymm registers, one 8-channel block
// per vector, and differ only in their tile sizes (AVX-512 has 32 registers), which each ISA
// file adds by deriving from Ymm.  Include the intrinsics (immintrin.h or x86_intrinsics.h)
// first; internal linkage, so each ISA file compiles its own copy with its own flags.
#pragma once

#include "kernels/x86_transpose.h"

namespace sk {
namespace {

struct Ymm {
  using T = __m256;  // 8 floats: a channel block, or one row over 8 pixels
  using H = __m128;  // 4 floats: one pixel's 4 rows of a 1x4 group
  static T load(const float* p) { return _mm256_loadu_ps(p); }
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
  static H hload(const float* p) { return _mm_loadu_ps(p); }
  static void hstore(float* p, H v) { _mm_storeu_ps(p, v); }
  static H hadd(H a, H b) { return _mm_add_ps(a, b); }
  static H hclamp(H v, H lo, H hi) { return _mm_min_ps(hi, _mm_max_ps(lo, v)); }
  static H hset1(float f) { return _mm_set1_ps(f); }
};

}  // namespace
}  // namespace sk
