// AVX2+FMA sparse x dense kernels in NCHW (spmm.h; compiled with -mavx2 -mfma, chosen by
// cpuid at run time):
//   spmm_24x4_avx2: B = 4, 24 pixels x 4 rows = 12 ymm accumulators (3 X vectors and a
//                   broadcast weight make 16 registers).
//   spmm_48x1_avx2: B = 1, 48 pixels x 1 row in two sets of 6 accumulators (12 independent
//                   FMA chains; 48 measured ~10% faster than 32).
// Partial vectors use maskload/maskstore, so lanes past the end are never touched.
#include <immintrin.h>

#include "kernels/isa_parts.h"
#include "kernels/spmm.h"
#include "kernels/x86_ymm.h"

namespace sk {
namespace {

struct Avx2 : Ymm {
  using M = __m256i;
  using W = const float*;  // broadcast per row at the FMA (vbroadcastss from memory)
  static constexpr int kNV4 = 3, kNV1 = 6;
  static M full() { return _mm256_set1_epi32(-1); }
  static M tail(size_t m) { return mask(static_cast<int>(m)); }
  template <bool PART>
  static T load(const float* p, M m) {
    return PART ? _mm256_maskload_ps(p, m) : _mm256_loadu_ps(p);
  }
  template <bool PART>
  static void store(float* p, T v, M m) {
    if (PART)
      _mm256_maskstore_ps(p, m, v);
    else
      _mm256_storeu_ps(p, v);
  }
  static W wload(const float* p) { return p; }
  template <int b>
  static T fma_w(W w, T x, T acc) { return _mm256_fmadd_ps(_mm256_broadcast_ss(w + b), x, acc); }
};

void spmm_24x4_avx2(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                    float* y, ptrdiff_t y_stride, const Epilogue& ep) {
  Spmm<Avx2>::run<true>(n, w, g_begin, g_end, x, y, y_stride, ep);
}

void spmm_48x1_avx2(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                    float* y, ptrdiff_t y_stride, const Epilogue& ep) {
  Spmm<Avx2>::run<false>(n, w, g_begin, g_end, x, y, y_stride, ep);
}

constexpr KernelTable make_table() {
  KernelTable t{};
  t.isa = Isa::avx2;
  t.name = "avx2";
  t.tile_pixels = 24;
  t.spmm_b1 = spmm_48x1_avx2;
  t.spmm_b4 = spmm_24x4_avx2;
  t.dwconv = dwconv_avx2;
  t.spmv_lanes = 8;
  t.spmv_bank = spmv_bank_avx2;
  t.dwconv_multi = dwconv_multi_avx2;
  t.dw_multi_lanes = 8;
  t.b1_tile_pixels = 48;
  t.predict_quantize = predict_quantize_avx2;
  t.predict = predict_avx2;
  t.predict_units = predict_units_avx2;
  t.predict_exact = predict_exact_avx2;
  t.dwconv_blocked = dwconv_c8x8_avx2;
  t.to_blocked = to_blocked_avx2;
  t.from_blocked = from_blocked_avx2;
  t.spmm_b4_blocked = spmm_c8_24x4_avx2;
  t.spmm_b4_panel_blocked = spmm_panel_c8_24x4_avx2;
  t.dense_blocked = dense_c8_6x16_avx2;
  return t;
}

constexpr KernelTable kTable = make_table();

}  // namespace

const KernelTable* kernels_avx2() { return &kTable; }

}  // namespace sk
