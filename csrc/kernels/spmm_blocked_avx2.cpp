// AVX2+FMA 1x4 SpMM on 8-channel blocks (spmm_blocked.h): register tile 4 rows x 24 pixels
// (12 ymm accumulators, as spmm_24x4_avx2), X through a transposed panel, Y stored as 4-lane
// pixel halves transposed in registers.
#include <immintrin.h>

#include "kernels/isa_parts.h"
#include "kernels/spmm_blocked.h"
#include "kernels/x86_ymm.h"

namespace sk {
namespace {

struct Avx2Spmm : Ymm {
  static constexpr int kMaxNV = 3;  // 12 accumulators + 3 X + 1 broadcast of the 16
};

}  // namespace

void spmm_c8_24x4_avx2(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                       ptrdiff_t x_bstride, int x_blocks, float* y, ptrdiff_t y_bstride,
                       const Epilogue& ep, float* panel, int panel_stride) {
  SpmmBlocked<Avx2Spmm>::run(n, w, g_begin, g_end, x, x_bstride, x_blocks, y, y_bstride, ep,
                             panel, panel_stride);
}

void spmm_panel_c8_24x4_avx2(size_t n, const SpMat& w, int g_begin, int g_end,
                       const float* panel, float* y, ptrdiff_t y_bstride, const Epilogue& ep) {
  SpmmBlocked<Avx2Spmm>::sweep(n, w, g_begin, g_end, panel, y, y_bstride, ep, 0);
}

}  // namespace sk
