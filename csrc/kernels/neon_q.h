// The 4-lane q-register operations every NEON policy shares (spmm.h, spmv.h, dwconv.h); each
// family's policy derives from Q4 and adds its tile sizes and what is its own.  NEON has no
// masked loads: partial vectors go lane by lane, reading and writing nothing past m.
// Internal linkage, as the templates.
#pragma once

#include <arm_neon.h>

namespace sk {
namespace {

struct Q4 {
  using T = float32x4_t;
  static constexpr int kLanes = 4;
  static T load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, T v) { vst1q_f32(p, v); }
  // Lanes [first, end) <- p[0 .. end - first), the rest 0; reads nothing else.  Used only at
  // row ends: out of line keeps the hot loops small.
  __attribute__((noinline)) static T load_lanes(const float* p, int first, int end) {
    T v = vdupq_n_f32(0.0f);
    if (first <= 0 && 0 < end) v = vld1q_lane_f32(p, v, 0);
    if (first <= 1 && 1 < end) v = vld1q_lane_f32(p + (1 - first), v, 1);
    if (first <= 2 && 2 < end) v = vld1q_lane_f32(p + (2 - first), v, 2);
    if (first <= 3 && 3 < end) v = vld1q_lane_f32(p + (3 - first), v, 3);
    return v;
  }
  static T load_part(const float* p, int m) { return load_lanes(p, 0, m); }
  static void store_part(float* p, T v, int m) {
    float t[4];
    vst1q_f32(t, v);
    for (int i = 0; i < m; ++i) p[i] = t[i];
  }
  static T zero() { return vdupq_n_f32(0.0f); }
  static T set1(float f) { return vdupq_n_f32(f); }
  static T add(T a, T b) { return vaddq_f32(a, b); }
  // vmaxq/vminq return NaN when either operand is NaN
  static T clamp(T v, T lo, T hi) { return vminq_f32(hi, vmaxq_f32(lo, v)); }
};

}  // namespace
}  // namespace sk
