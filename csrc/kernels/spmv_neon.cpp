// NEON bank-balanced matrix-vector product (spmv.h): 4 rows interleaved, one per lane.
// AArch64 has no float permute with per-lane variable indices short of byte table lookups, so
// each step loads its 4 x values into lanes (ld1 lane) from the bank's slice, which stays in
// L1 (kMaxNX = 0: no slice in registers).  Partial row groups go through a stack buffer.
#include <arm_neon.h>

#include "kernels/isa_parts.h"
#include "kernels/spmv.h"

namespace sk {
namespace {

struct Neon {
  using T = float32x4_t;
  using M = int;  // rows of the group
  static constexpr int kLanes = 4, kMaxNX = 0;
  static M rows(int nr) { return nr; }
  static T load(const float* p) { return vld1q_f32(p); }
  static T load_rows(const float* p, M m) {
    if (m == 4) return vld1q_f32(p);
    float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < m; ++i) t[i] = p[i];
    return vld1q_f32(t);
  }
  static void store_rows(float* p, T v, M m) {
    if (m == 4) return vst1q_f32(p, v);
    float t[4];
    vst1q_f32(t, v);
    for (int i = 0; i < m; ++i) p[i] = t[i];
  }
  static T zero() { return vdupq_n_f32(0.0f); }
  static T add(T a, T b) { return vaddq_f32(a, b); }
  static T fma(T a, T b, T c) { return vfmaq_f32(c, a, b); }
  template <int NX>
  static T pick(const T*, const uint8_t* o, const float* xb) {
    float32x4_t xv = vdupq_n_f32(0.0f);
    xv = vld1q_lane_f32(xb + o[0], xv, 0);
    xv = vld1q_lane_f32(xb + o[1], xv, 1);
    xv = vld1q_lane_f32(xb + o[2], xv, 2);
    return vld1q_lane_f32(xb + o[3], xv, 3);
  }
};

}  // namespace

void spmv_bank_neon(const BankMat& w, int g_begin, int g_end, const float* x, const float* init,
                    float* y) {
  SpmvBank<Neon>::run(w, g_begin, g_end, x, init, y);
}

}  // namespace sk
