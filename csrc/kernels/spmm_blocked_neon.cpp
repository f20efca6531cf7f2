// aarch64 NEON 1x4 SpMM on 8-channel blocks (spmm_blocked.h): 8 pixels are two q registers,
// register tile 4 rows x 16 pixels (16 accumulator registers of the 32, leaving room for the
// X vectors and the 4 broadcast weights); 4x4 transposes with trn1/trn2.
#include <arm_neon.h>

#include "kernels/isa_parts.h"
#include "kernels/spmm_blocked.h"

namespace sk {
namespace {

// 4x4 transpose: out[i] lane j = in[j] lane i.
inline __attribute__((always_inline)) void transpose4(float32x4_t a0, float32x4_t a1,
                                                      float32x4_t a2, float32x4_t a3,
                                                      float32x4_t* o0, float32x4_t* o1,
                                                      float32x4_t* o2, float32x4_t* o3) {
  const float32x4_t t0 = vtrn1q_f32(a0, a1), t1 = vtrn2q_f32(a0, a1);
  const float32x4_t t2 = vtrn1q_f32(a2, a3), t3 = vtrn2q_f32(a2, a3);
  *o0 = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
  *o1 = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
  *o2 = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
  *o3 = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
}

struct NeonSpmm {
  struct T {
    float32x4_t lo, hi;  // pixels 0-3, 4-7
  };
  using H = float32x4_t;
  static constexpr int kLanes = 8;
  static constexpr int kMaxNV = 2;
  static T load(const float* p) { return {vld1q_f32(p), vld1q_f32(p + 4)}; }
  static void store(float* p, T v) {
    vst1q_f32(p, v.lo);
    vst1q_f32(p + 4, v.hi);
  }
  static T zero() { return {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)}; }
  static T set1(float f) { return {vdupq_n_f32(f), vdupq_n_f32(f)}; }
  static T fma(T a, T b, T c) {
    return {vfmaq_f32(c.lo, a.lo, b.lo), vfmaq_f32(c.hi, a.hi, b.hi)};
  }
  static T add(T a, T b) { return {vaddq_f32(a.lo, b.lo), vaddq_f32(a.hi, b.hi)}; }
  // vmaxq/vminq return NaN when either operand is NaN
  static T clamp(T v, T lo, T hi) {
    return {vminq_f32(hi.lo, vmaxq_f32(lo.lo, v.lo)), vminq_f32(hi.hi, vmaxq_f32(lo.hi, v.hi))};
  }
  // Four 4x4 transposes: rows 0-3 / 4-7 x lanes 0-3 / 4-7.
  static void transpose8(T (&r)[8]) {
    T o[8];
    transpose4(r[0].lo, r[1].lo, r[2].lo, r[3].lo, &o[0].lo, &o[1].lo, &o[2].lo, &o[3].lo);
    transpose4(r[4].lo, r[5].lo, r[6].lo, r[7].lo, &o[0].hi, &o[1].hi, &o[2].hi, &o[3].hi);
    transpose4(r[0].hi, r[1].hi, r[2].hi, r[3].hi, &o[4].lo, &o[5].lo, &o[6].lo, &o[7].lo);
    transpose4(r[4].hi, r[5].hi, r[6].hi, r[7].hi, &o[4].hi, &o[5].hi, &o[6].hi, &o[7].hi);
    for (int i = 0; i < 8; ++i) r[i] = o[i];
  }
  static void rows_to_pixels(const T (&r)[4], H (&px)[8]) {
    transpose4(r[0].lo, r[1].lo, r[2].lo, r[3].lo, &px[0], &px[1], &px[2], &px[3]);
    transpose4(r[0].hi, r[1].hi, r[2].hi, r[3].hi, &px[4], &px[5], &px[6], &px[7]);
  }
  static void rows_to_pairs(const T (&r)[4], T (&u)[4]) {
    transpose4(r[0].lo, r[1].lo, r[2].lo, r[3].lo, &u[0].lo, &u[1].lo, &u[2].lo, &u[3].lo);
    transpose4(r[0].hi, r[1].hi, r[2].hi, r[3].hi, &u[0].hi, &u[1].hi, &u[2].hi, &u[3].hi);
  }
  static T line_lo(T ua, T ub) { return {ua.lo, ub.lo}; }
  static T line_hi(T ua, T ub) { return {ua.hi, ub.hi}; }
  static H hload(const float* p) { return vld1q_f32(p); }
  static void hstore(float* p, H v) { vst1q_f32(p, v); }
  static H hadd(H a, H b) { return vaddq_f32(a, b); }
  static H hclamp(H v, H lo, H hi) { return vminq_f32(hi, vmaxq_f32(lo, v)); }
  static H hset1(float f) { return vdupq_n_f32(f); }
};

}  // namespace

void spmm_c8_16x4_neon(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                       ptrdiff_t x_bstride, int x_blocks, float* y, ptrdiff_t y_bstride,
                       const Epilogue& ep, float* panel, int panel_stride) {
  SpmmBlocked<NeonSpmm>::run(n, w, g_begin, g_end, x, x_bstride, x_blocks, y, y_bstride, ep,
                             panel, panel_stride);
}

void spmm_panel_c8_16x4_neon(size_t n, const SpMat& w, int g_begin, int g_end,
                       const float* panel, float* y, ptrdiff_t y_bstride, const Epilogue& ep) {
  SpmmBlocked<NeonSpmm>::sweep(n, w, g_begin, g_end, panel, y, y_bstride, ep, 0);
}

}  // namespace sk
