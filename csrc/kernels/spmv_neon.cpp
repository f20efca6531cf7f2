// NEON bank-balanced matrix-vector product (kernels.h, BankMat): 4 rows interleaved, one row
// per lane.  AArch64 has no float permute with per-lane variable indices short of byte table
// lookups, so each step loads its 4 x values into lanes (ld1 lane) from the bank's slice,
// which stays in L1.  Two accumulators hide the FMA latency.
#include <arm_neon.h>

#include "kernels/isa_parts.h"
#include "kernels/kernels.h"

namespace sk {
namespace {

__attribute__((always_inline)) inline float32x4_t step(const float* v, const uint8_t* o,
                                                       const float* xb, float32x4_t acc) {
  float32x4_t xv = vdupq_n_f32(0.0f);
  xv = vld1q_lane_f32(xb + o[0], xv, 0);
  xv = vld1q_lane_f32(xb + o[1], xv, 1);
  xv = vld1q_lane_f32(xb + o[2], xv, 2);
  xv = vld1q_lane_f32(xb + o[3], xv, 3);
  return vfmaq_f32(acc, vld1q_f32(v), xv);
}

}  // namespace

void spmv_bank_neon(const BankMat& w, int g_begin, int g_end, const float* x, const float* init,
                    float* y) {
  const int nb = w.nbanks, keep = w.keep, bs = w.bank_size;
  const size_t per_group = size_t(nb) * keep * 4;
  for (int g = g_begin; g < g_end; ++g) {
    const float* v = w.values + g * per_group;
    const uint8_t* o = w.offs + g * per_group;
    const int r0 = g * 4;
    const int nr = w.rows - r0 < 4 ? w.rows - r0 : 4;
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
    for (int b = 0; b < nb; ++b) {
      const float* xb = x + size_t(b) * bs;
      int q = 0;
      for (; q + 2 <= keep; q += 2, v += 8, o += 8) {
        a0 = step(v, o, xb, a0);
        a1 = step(v + 4, o + 4, xb, a1);
      }
      for (; q < keep; ++q, v += 4, o += 4) a0 = step(v, o, xb, a0);
    }
    float out[4];
    vst1q_f32(out, vaddq_f32(a0, a1));
    for (int l = 0; l < nr; ++l) y[r0 + l] = (init ? init[r0 + l] : 0.0f) + out[l];
  }
}

}  // namespace sk
