// aarch64 NEON depthwise convolution of NCHW planes (dwconv.h): 4 output columns per q
// register, the taps kept as floats (fmla by element).  Stride 2 uses vld2q_f32, which loads 8
// consecutive inputs already split into even and odd columns.  Partial rows lane by lane;
// dwconv_multi goes plane by plane.
#include "kernels/dwconv.h"
#include "kernels/isa_parts.h"
#include "kernels/neon_q.h"

namespace sk {
namespace {

struct NeonDw : Q4 {
  using Wt = float;
  using Pair = float32x4x2_t;
  static constexpr bool kShortRing = false;
  static constexpr bool kWholeTailStores = false;
  static constexpr bool kMulti = false;

  static T load_shifted(const float* p, int sh, int m) { return load_lanes(p, sh, sh + m); }
  static Wt weight(const float* p) { return *p; }
  static T fma(Wt w, T v, T acc) { return vfmaq_n_f32(acc, v, w); }

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
