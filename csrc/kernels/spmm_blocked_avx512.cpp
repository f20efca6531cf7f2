// AVX-512 (VL) 1x4 SpMM on 8-channel blocks (spmm_blocked.h): accumulates in zmm (4 rows x 48
// pixels, 12 accumulators, as the NCHW spmm_48x4 tile), split into ymm halves for the pixel-pair
// epilogue.  Measured on a Zen 5 EPYC (the first native AVX-512 run, 2026-12-06): the ymm-only
// tile ran MobileNetV1's 1x1 layers at 0.6-0.7x of the NCHW zmm op, this one at 0.7-0.86x on
// K < 256 and at parity above.
// GCC 12 warns about its own _mm512_undefined_ps inside the intrinsics (as in spmm_avx512.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "kernels/x86_intrinsics.h"

#include "kernels/isa_parts.h"
#include "kernels/spmm_blocked.h"
#include "kernels/x86_ymm.h"
#include "kernels/x86_zmm.h"

namespace sk {
namespace {

struct Avx512Spmm : Ymm {
  // 4 rows x 48 pixels: 12 zmm accumulators (split into ymm halves for the epilogue)
  static constexpr int kMaxNV = 6;
  using Wide = Zmm;
  static T low(__m512 v) { return Zmm::low(v); }
  static T high(__m512 v) { return Zmm::high(v); }
  // both groups of a Y block live (24 of the 32 zmm), whole lines shuffled in registers
  static constexpr bool kLines = true;
  static void rows_to_lines(__m512 (&r)[8]) { rows8_to_pixel_lines(r); }
  static void lines_to_rows(__m512 (&r)[8]) { pixel_lines_to_rows8(r); }  // the X panel
};

}  // namespace

void spmm_c8_48x4_avx512(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                       ptrdiff_t x_bstride, int x_blocks, float* y, ptrdiff_t y_bstride,
                       const Epilogue& ep, float* panel, int panel_stride) {
  SpmmBlocked<Avx512Spmm>::run(n, w, g_begin, g_end, x, x_bstride, x_blocks, y, y_bstride, ep,
                             panel, panel_stride);
}

void spmm_panel_c8_48x4_avx512(size_t n, const SpMat& w, int g_begin, int g_end,
                       const float* panel, float* y, ptrdiff_t y_bstride, const Epilogue& ep) {
  SpmmBlocked<Avx512Spmm>::sweep(n, w, g_begin, g_end, panel, y, y_bstride, ep, 0);
}

}  // namespace sk
