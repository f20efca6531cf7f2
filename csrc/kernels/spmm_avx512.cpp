// AVX-512F sparse x dense kernels in NCHW (spmm.h; compiled with -mavx512f/vl/bw/dq, chosen
// by cpuid):
//   spmm_48x4_avx512: B = 4, 48 pixels x 4 rows = 12 zmm accumulators.
//   spmm_32x1_avx512: B = 1, 32 pixels x 1 row in two sets of 2 accumulators (64 pixels
//                     measured no faster: unstructured rows are load/L2-bound).
// Partial vectors use __mmask16 loads/stores: lanes past the end are never read or written.
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_ps() through, which -Wmaybe-uninitialized
// reports as a false positive at every use of _mm512_max_ps/_mm512_min_ps.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/x86_intrinsics.h"

#include "kernels/isa_parts.h"
#include "kernels/spmm.h"
#include "kernels/x86_zmm.h"

namespace sk {
namespace {

struct Avx512 : Zmm {
  using M = __mmask16;
  using W = const float*;  // broadcast per row at the FMA
  static constexpr int kNV4 = 3, kNV1 = 2;
  static M full() { return 0xFFFF; }
  static M tail(size_t m) { return mask(static_cast<int>(m)); }
  template <bool PART>
  static T load(const float* p, M m) {
    return PART ? _mm512_maskz_loadu_ps(m, p) : _mm512_loadu_ps(p);
  }
  template <bool PART>
  static void store(float* p, T v, M m) {
    if (PART)
      _mm512_mask_storeu_ps(p, m, v);
    else
      _mm512_storeu_ps(p, v);
  }
  static W wload(const float* p) { return p; }
  template <int b>
  static T fma_w(W w, T x, T acc) { return _mm512_fmadd_ps(_mm512_set1_ps(w[b]), x, acc); }
};

void spmm_48x4_avx512(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                      float* y, ptrdiff_t y_stride, const Epilogue& ep) {
  Spmm<Avx512>::run<true>(n, w, g_begin, g_end, x, y, y_stride, ep);
}

void spmm_32x1_avx512(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                      float* y, ptrdiff_t y_stride, const Epilogue& ep) {
  Spmm<Avx512>::run<false>(n, w, g_begin, g_end, x, y, y_stride, ep);
}

// The prediction is vpdpbusd's where the CPU has VNNI (Cascade Lake, Ice Lake and later, Zen 4),
// else the AVX2 kernel's (Skylake-SP has AVX-512 but no VNNI).
constexpr KernelTable make_table(bool vnni) {
  KernelTable t{};
  t.isa = Isa::avx512;
  t.name = "avx512";
  t.tile_pixels = 48;
  t.spmm_b1 = spmm_32x1_avx512;
  t.spmm_b4 = spmm_48x4_avx512;
  t.dwconv = dwconv_avx512;
  t.spmv_lanes = 16;
  t.spmv_bank = spmv_bank_avx512;
  t.dwconv_multi = dwconv_multi_avx512;
  t.dw_multi_lanes = 16;
  t.b1_tile_pixels = 32;
  t.predict_quantize = predict_quantize_avx2;
  t.predict = vnni ? predict_avx512vnni : predict_avx2;
  t.predict_units = vnni ? predict_units_avx512vnni : predict_units_avx2;
  t.predict_exact = predict_exact_avx2;
  t.dwconv_blocked = dwconv_c8x12_avx512;
  t.to_blocked = to_blocked_avx2;
  t.from_blocked = from_blocked_avx2;
  t.spmm_b4_blocked = spmm_c8_48x4_avx512;
  t.spmm_b4_panel_blocked = spmm_panel_c8_48x4_avx512;
  t.dense_blocked = dense_c8_12x32_avx512;
  return t;
}

constexpr KernelTable kTable = make_table(false);
constexpr KernelTable kTableVnni = make_table(true);

}  // namespace

const KernelTable* kernels_avx512() { return cpu_has_avx512vnni() ? &kTableVnni : &kTable; }

}  // namespace sk
