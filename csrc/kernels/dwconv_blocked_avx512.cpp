// AVX-512 (VL) depthwise convolution on 8-channel blocks (dwconv_blocked.h): rows wider than 8
// run two blocks per zmm (Duo: both blocks of a pixel in one register, half the FMAs of ymm
// tiles on a CPU with full-width 512-bit units; no load splits a cache line), 7x7 rows four
// blocks per tile on ymm (AVX-512's 32 registers); what was tried and measured is in
// docs/kernels.md (one block's two pixels per zmm: line-splitting loads or in-register shifts,
// no faster).
// GCC 12 warns about its own _mm512_undefined_ps inside the intrinsics (as in dwconv_avx512.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/x86_intrinsics.h"

#include "kernels/dwconv_blocked.h"
#include "kernels/isa_parts.h"
#include "kernels/x86_ymm.h"
#include "kernels/x86_zmm.h"

namespace sk {
namespace {

struct Avx512C8 : Ymm {
  static constexpr int kStrip = 12;  // ymm one-block tiles (a last odd block), and 4 x 3 on 7x7
  // Two-block tiles on zmm at every width (dwconv_blocked.h tile_duo), 12 pixels per tile.
  static constexpr int kDuoStrip = 12;
  struct Duo : Zmm {  // block 0 in the low half, block 1 in the high half
    static T join_load(const float* lo, const float* hi) {
      return join(_mm256_loadu_ps(lo), _mm256_loadu_ps(hi));
    }
    static void store2(float* lo, float* hi, T v) {
      _mm256_storeu_ps(lo, low(v));
      _mm256_storeu_ps(hi, high(v));
    }
  };
};

}  // namespace

void dwconv_c8x12_avx512(const DwShape& s, int nblk, const float* x, const float* w,
                         const float* bias, float lo, float hi, float* y, int oy_begin,
                         int oy_end) {
  DwBlocked<Avx512C8>::conv(s, nblk, x, w, bias, lo, hi, y, oy_begin, oy_end);
}

}  // namespace sk
