// Kernels that one ISA file defines and that ISA's table (in another file of the same ISA)
// refers to.  Each is a plain, non-inline function with an ISA-suffixed name, so no two
// ISA builds of one symbol can exist for the linker to mix up.  Internal to csrc/kernels.
#pragma once
#include "kernels/kernels.h"

namespace sk {

void dwconv_avx2(const DwShape& s, const float* x, const float* w, float bias, float lo,
                 float hi, float* y);
void dwconv_avx512(const DwShape& s, const float* x, const float* w, float bias, float lo,
                   float hi, float* y);
void dwconv_neon(const DwShape& s, const float* x, const float* w, float bias, float lo,
                 float hi, float* y);
void dwconv_multi_avx2(const DwShape& s, int nch, const float* x, const float* w,
                       const float* bias, float lo, float hi, float* y);
void dwconv_multi_avx512(const DwShape& s, int nch, const float* x, const float* w,
                         const float* bias, float lo, float hi, float* y);
void dwconv_multi_neon(const DwShape& s, int nch, const float* x, const float* w,
                       const float* bias, float lo, float hi, float* y);
// Channel-blocked depthwise (dwconv_blocked.h), named by ISA and interior tile: 8 channels x
// P output pixels per register tile.
void dwconv_c8_ref(const DwShape& s, int nblk, const float* x, const float* w,
                   const float* bias, float lo, float hi, float* y, int oy_begin, int oy_end);
void dwconv_c8x8_avx2(const DwShape& s, int nblk, const float* x, const float* w,
                      const float* bias, float lo, float hi, float* y, int oy_begin, int oy_end);
void dwconv_c8x12_avx512(const DwShape& s, int nblk, const float* x, const float* w,
                         const float* bias, float lo, float hi, float* y, int oy_begin,
                         int oy_end);
void dwconv_c8x8_neon(const DwShape& s, int nblk, const float* x, const float* w,
                      const float* bias, float lo, float hi, float* y, int oy_begin, int oy_end);

// Layout changes of one channel block (kernels.h ToBlockedFn / FromBlockedFn); the AVX-512
// table uses the AVX2 ones (8 lanes are one ymm), NEON the reference loops.
void to_blocked_ref(const float* x, ptrdiff_t plane, int lanes, size_t n, float* y);
void from_blocked_ref(const float* x, int lanes, size_t n, float* y, ptrdiff_t plane);
void to_blocked_avx2(const float* x, ptrdiff_t plane, int lanes, size_t n, float* y);
void from_blocked_avx2(const float* x, int lanes, size_t n, float* y, ptrdiff_t plane);

// 1x4 SpMM on channel blocks (spmm_blocked.h), named by register tile (8-lane pixel vectors
// x 4 rows) and ISA; the reference is plain loops over kernels.h's definition.
void spmm_c8_ref(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                 ptrdiff_t x_bstride, int x_blocks, float* y, ptrdiff_t y_bstride,
                 const Epilogue& ep, float* panel, int panel_stride);
void spmm_c8_24x4_avx2(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                       ptrdiff_t x_bstride, int x_blocks, float* y, ptrdiff_t y_bstride,
                       const Epilogue& ep, float* panel, int panel_stride);
void spmm_c8_48x4_avx512(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                         ptrdiff_t x_bstride, int x_blocks, float* y, ptrdiff_t y_bstride,
                         const Epilogue& ep, float* panel, int panel_stride);
void spmm_c8_16x4_neon(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                       ptrdiff_t x_bstride, int x_blocks, float* y, ptrdiff_t y_bstride,
                       const Epilogue& ep, float* panel, int panel_stride);
// The same from a filled panel (kernels.h SpmmPanelBlockedFn).
void spmm_panel_c8_ref(size_t n, const SpMat& w, int g_begin, int g_end, const float* panel,
                       float* y, ptrdiff_t y_bstride, const Epilogue& ep);
void spmm_panel_c8_24x4_avx2(size_t n, const SpMat& w, int g_begin, int g_end,
                             const float* panel, float* y, ptrdiff_t y_bstride,
                             const Epilogue& ep);
void spmm_panel_c8_48x4_avx512(size_t n, const SpMat& w, int g_begin, int g_end,
                               const float* panel, float* y, ptrdiff_t y_bstride,
                               const Epilogue& ep);
void spmm_panel_c8_16x4_neon(size_t n, const SpMat& w, int g_begin, int g_end,
                             const float* panel, float* y, ptrdiff_t y_bstride,
                             const Epilogue& ep);

// A dense conv into channel blocks (kernels.h DenseBlockedFn), named by register tile (pixels
// x output channels) and ISA; the reference is plain loops.
void dense_c8_ref(size_t n, const DenseMat& w, const float* x, int x_pstride, float* y,
                  ptrdiff_t y_bstride, const Epilogue& ep);
void dense_c8_6x16_avx2(size_t n, const DenseMat& w, const float* x, int x_pstride, float* y,
                        ptrdiff_t y_bstride, const Epilogue& ep);
void dense_c8_12x32_avx512(size_t n, const DenseMat& w, const float* x, int x_pstride, float* y,
                           ptrdiff_t y_bstride, const Epilogue& ep);
void dense_c8_4x16_neon(size_t n, const DenseMat& w, const float* x, int x_pstride, float* y,
                        ptrdiff_t y_bstride, const Epilogue& ep);

void spmv_bank_ref(const BankMat& w, int g_begin, int g_end, const float* x, const float* init,
                   float* y);
void spmv_bank_avx2(const BankMat& w, int g_begin, int g_end, const float* x, const float* init,
                    float* y);
void spmv_bank_avx512(const BankMat& w, int g_begin, int g_end, const float* x,
                      const float* init, float* y);
void spmv_bank_neon(const BankMat& w, int g_begin, int g_end, const float* x, const float* init,
                    float* y);

}  // namespace sk
