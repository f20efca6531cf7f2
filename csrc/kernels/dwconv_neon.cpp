// aarch64 NEON depthwise convolution of NCHW planes (dwconv.h): 4 output columns per q
// register, the taps kept as floats (fmla by element).  Stride 2 uses vld2q_f32, which loads 8
// consecutive inputs already split into even and odd columns.  Partial rows lane by lane;
// dwconv_multi goes plane by plane.
#include <arm_neon.h>

#include "kernels/dwconv.h"
#include "kernels/isa_parts.h"

namespace sk {
namespace {

struct NeonDw {
  using T = float32x4_t;
  using Wt = float;
  using Pair = float32x4x2_t;
  static constexpr int kLanes = 4;
  static constexpr bool kShortRing = false;
  static constexpr bool kWholeTailStores = false;
  static constexpr bool kMulti = false;

  static T load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, T v) { vst1q_f32(p, v); }
  // Lanes [first, end) <- p[0 .. end - first), the rest 0; reads nothing else.  Only at row
  // ends (copy tails, the direct path's border chunks): out of line keeps those chunks small.
  __attribute__((noinline)) static T load_lanes(const float* p, int first, int end) {
    T v = vdupq_n_f32(0.0f);
    if (first <= 0 && 0 < end) v = vld1q_lane_f32(p, v, 0);
    if (first <= 1 && 1 < end) v = vld1q_lane_f32(p + (1 - first), v, 1);
    if (first <= 2 && 2 < end) v = vld1q_lane_f32(p + (2 - first), v, 2);
    if (first <= 3 && 3 < end) v = vld1q_lane_f32(p + (3 - first), v, 3);
    return v;
  }
  static T load_part(const float* p, int m) { return load_lanes(p, 0, m); }
  static T load_shifted(const float* p, int sh, int m) { return load_lanes(p, sh, sh + m); }
  static void store_part(float* p, T v, int m) {
    float t[4];
    vst1q_f32(t, v);
    for (int i = 0; i < m; ++i) p[i] = t[i];
  }
  static T zero() { return vdupq_n_f32(0.0f); }
  static T set1(float f) { return vdupq_n_f32(f); }
  static T add(T a, T b) { return vaddq_f32(a, b); }
  static Wt weight(const float* p) { return *p; }
  static T fma(Wt w, T v, T acc) { return vfmaq_n_f32(acc, v, w); }
  // vmaxq/vminq return NaN when either operand is NaN
  static T clamp(T v, T lo, T hi) { return vminq_f32(hi, vmaxq_f32(lo, v)); }

  static Pair load2(const float* row, int i) { return vld2q_f32(row + i); }
  static Pair pair(T lo, T hi) { return {{vuzp1q_f32(lo, hi), vuzp2q_f32(lo, hi)}}; }
  static T even(const Pair& p) { return p.val[0]; }
  static T odd(const Pair& p) { return p.val[1]; }
  static T s2_order(T v) { return v; }
};

}  // namespace

void dwconv_neon(const DwShape& s, const float* x, const float* w, float bias, float lo,
                 float hi, float* y) {
  DwConv<NeonDw>::plane(s, x, w, bias, lo, hi, y);
}

void dwconv_multi_neon(const DwShape& s, int nch, const float* x, const float* w,
                       const float* bias, float lo, float hi, float* y) {
  DwConv<NeonDw>::multi(s, nch, x, w, bias, lo, hi, y);
}

}  // namespace sk
