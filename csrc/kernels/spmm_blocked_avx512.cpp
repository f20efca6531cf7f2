// AVX-512 (VL) 1x4 SpMM on 8-channel blocks (spmm_blocked.h): ymm registers as the AVX2 one,
// AVX-512's 32 of them for 4 rows x 32 pixels (16 accumulators; not tuned: this machine has
// no AVX-512, the tile is checked in emulation only).  X through a transposed panel, Y as 4-lane
// pixel halves transposed in registers.
// GCC 12 warns about its own _mm512_undefined_ps inside the intrinsics (as in spmm_avx512.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/x86_intrinsics.h"

#include "kernels/isa_parts.h"
#include "kernels/spmm_blocked.h"
#include "kernels/x86_ymm.h"

namespace sk {
namespace {

struct Avx512Spmm : Ymm {
  static constexpr int kMaxNV = 4;  // 16 accumulators + 4 X + 1 broadcast of the 32
};

}  // namespace

void spmm_c8_32x4_avx512(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                       ptrdiff_t x_bstride, int x_blocks, float* y, ptrdiff_t y_bstride,
                       const Epilogue& ep, float* panel, int panel_stride) {
  SpmmBlocked<Avx512Spmm>::run(n, w, g_begin, g_end, x, x_bstride, x_blocks, y, y_bstride, ep,
                             panel, panel_stride);
}

void spmm_panel_c8_32x4_avx512(size_t n, const SpMat& w, int g_begin, int g_end,
                       const float* panel, float* y, ptrdiff_t y_bstride, const Epilogue& ep) {
  SpmmBlocked<Avx512Spmm>::sweep(n, w, g_begin, g_end, panel, y, y_bstride, ep, 0);
}

}  // namespace sk
