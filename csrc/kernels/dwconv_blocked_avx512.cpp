// AVX-512 (VL) depthwise convolution on 8-channel blocks (dwconv_blocked.h): ymm registers,
// one pixel each, and AVX-512's 32 of them for tiles of 12 output pixels.
//
// Why not zmm: a zmm holding two pixels' blocks (weights repeated in both halves, stride 1
// as one 64-byte load, stride 2 as two 32-byte loads joined) was measured slower on the AMD
// EPYC (Zen 4) development VM, which splits 512-bit operations in two: MobileNetV1's
// 32x112x112 layer 0.093-0.130 ms against 0.077-0.079 for ymm tiles, 1152x7x7 5x5 0.070 against
// 0.064 (benchmarks/bench_dw_blocked.py, same process).  Again on a Zen 5 EPYC VM (2026-12-06),
// stride 1 only, pairs loaded from even pixels (no split lines) and shifted in registers: the
// same as ymm tiles (32x112x112 0.073 vs 0.071 ms, 128x56x56 0.073 vs 0.073): the ymm tiles
// already run at ~90% of 2 ymm FMAs per cycle, and zmm FMAs gave no more multiply-adds there.
// GCC 12 warns about its own _mm512_undefined_ps inside the intrinsics (as in dwconv_avx512.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/x86_intrinsics.h"

#include "kernels/dwconv_blocked.h"
#include "kernels/isa_parts.h"
#include "kernels/x86_ymm.h"

namespace sk {
namespace {

struct Avx512C8 : Ymm {
  static constexpr int kStrip = 12;
  // 32 registers: 14-wide rows gain from pairs too (672x14x14 5x5: 0.082 vs 0.090 ms)
  static constexpr int kPairMaxWidth = 16;
};

}  // namespace

void dwconv_c8x12_avx512(const DwShape& s, int nblk, const float* x, const float* w,
                         const float* bias, float lo, float hi, float* y, int oy_begin,
                         int oy_end) {
  DwBlocked<Avx512C8>::conv(s, nblk, x, w, bias, lo, hi, y, oy_begin, oy_end);
}

}  // namespace sk
