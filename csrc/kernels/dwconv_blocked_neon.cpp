// aarch64 NEON depthwise convolution on 8-channel blocks (dwconv_blocked.h): a pixel's block is
// two q registers, tiles of 8 output pixels (16 accumulator registers of the 32).
#include <arm_neon.h>

#include "kernels/dwconv_blocked.h"
#include "kernels/isa_parts.h"

namespace sk {
namespace {

struct NeonC8 {
  struct T {
    float32x4_t lo, hi;
  };
  static constexpr int kStrip = 8;
  // as AVX2: 16 registers of 8 lanes
  static constexpr int kPairMaxWidth = 8;
  static T wload(const float* p) { return {vld1q_f32(p), vld1q_f32(p + 4)}; }
  static T load(const float* p) { return {vld1q_f32(p), vld1q_f32(p + 4)}; }
  static void store(float* p, T v) {
    vst1q_f32(p, v.lo);
    vst1q_f32(p + 4, v.hi);
  }
  static T fma(T a, T b, T c) {
    return {vfmaq_f32(c.lo, a.lo, b.lo), vfmaq_f32(c.hi, a.hi, b.hi)};
  }
  static T add(T a, T b) { return {vaddq_f32(a.lo, b.lo), vaddq_f32(a.hi, b.hi)}; }
  // vmaxq/vminq return NaN when either operand is NaN
  static T clamp(T v, T lo, T hi) {
    return {vminq_f32(hi.lo, vmaxq_f32(lo.lo, v.lo)), vminq_f32(hi.hi, vmaxq_f32(lo.hi, v.hi))};
  }
  static T set1(float f) { return {vdupq_n_f32(f), vdupq_n_f32(f)}; }
};

}  // namespace

void dwconv_c8x8_neon(const DwShape& s, int nblk, const float* x, const float* w,
                      const float* bias, float lo, float hi, float* y, int oy_begin,
                      int oy_end) {
  DwBlocked<NeonC8>::conv(s, nblk, x, w, bias, lo, hi, y, oy_begin, oy_end);
}

}  // namespace sk
