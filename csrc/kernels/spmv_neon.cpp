// NEON bank-balanced matrix-vector product (spmv.h): 4 rows interleaved, one per lane.
// AArch64 has no float permute with per-lane variable indices short of byte table lookups, so
// each step loads its 4 x values into lanes (ld1 lane) from the bank's slice, which stays in
// L1 (kMaxNX = 0: no slice in registers).
#include "kernels/isa_parts.h"
#include "kernels/neon_q.h"
#include "kernels/spmv.h"

namespace sk {
namespace {

struct Neon : Q4 {
  using M = int;  // rows of the group
  static constexpr int kMaxNX = 0;
  static M rows(int nr) { return nr; }
  static T load_rows(const float* p, M m) { return m == 4 ? vld1q_f32(p) : load_part(p, m); }
  static void store_rows(float* p, T v, M m) {
    if (m == 4)
      vst1q_f32(p, v);
    else
      store_part(p, v, m);
  }
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
