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
};

}  // namespace
}  // namespace sk
