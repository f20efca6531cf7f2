// aarch64 NEON sparse x dense kernels in NCHW (spmm.h; Advanced SIMD is baseline on aarch64):
//   spmm_16x4_neon: B = 4, 16 pixels x 4 rows = 16 q-register accumulators; per block one load
//                   of its 4 weights and lane-indexed FMAs (vfmaq_laneq_f32), no broadcasts.
//   spmm_16x1_neon: B = 1, 16 pixels x 1 row in two sets of 4 accumulators.
// Partial vectors (1..3 pixels) go lane by lane (neon_q.h), so no lane past the end of X, Y or
// the residual is read or written.
#include "kernels/isa_parts.h"
#include "kernels/neon_q.h"
#include "kernels/spmm.h"

namespace sk {
namespace {

struct Neon : Q4 {
  using M = int;  // valid lanes of a partial vector
  using W = float32x4_t;
  static constexpr int kNV4 = 4, kNV1 = 4;
  static M full() { return 4; }
  static M tail(size_t m) { return static_cast<int>(m); }
  template <bool PART>
  static T load(const float* p, M m) { return PART ? load_part(p, m) : vld1q_f32(p); }
  template <bool PART>
  static void store(float* p, T v, M m) {
    if (PART)
      store_part(p, v, m);
    else
      vst1q_f32(p, v);
  }
  static T fma(T a, T b, T c) { return vfmaq_f32(c, a, b); }
  static W wload(const float* p) { return vld1q_f32(p); }
  template <int b>
  static T fma_w(W w, T x, T acc) { return vfmaq_laneq_f32(acc, x, w, b); }
};

void spmm_16x4_neon(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                    float* y, ptrdiff_t y_stride, const Epilogue& ep) {
  Spmm<Neon>::run<true>(n, w, g_begin, g_end, x, y, y_stride, ep);
}

void spmm_16x1_neon(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                    float* y, ptrdiff_t y_stride, const Epilogue& ep) {
  Spmm<Neon>::run<false>(n, w, g_begin, g_end, x, y, y_stride, ep);
}

constexpr KernelTable make_table() {
  KernelTable t{};
  t.isa = Isa::neon;
  t.name = "neon";
  t.tile_pixels = 16;
  t.spmm_b1 = spmm_16x1_neon;
  t.spmm_b4 = spmm_16x4_neon;
  t.dwconv = dwconv_neon;
  t.spmv_lanes = 4;
  t.spmv_bank = spmv_bank_neon;
  t.dwconv_multi = dwconv_multi_neon;
  t.dw_multi_lanes = 1;
  t.b1_tile_pixels = 16;
  t.predict_quantize = predict_quantize_neon;
  t.predict = predict_neon;
  t.predict_units = predict_units_ref;
  t.predict_exact = predict_exact_ref;
  t.dwconv_blocked = dwconv_c8x8_neon;
  t.to_blocked = to_blocked_ref;
  t.from_blocked = from_blocked_ref;
  t.spmm_b4_blocked = spmm_c8_16x4_neon;
  t.spmm_b4_panel_blocked = spmm_panel_c8_16x4_neon;
  t.dense_blocked = dense_c8_4x16_neon;
  return t;
}

constexpr KernelTable kTable = make_table();

}  // namespace

const KernelTable* kernels_neon() { return &kTable; }

}  // namespace sk
