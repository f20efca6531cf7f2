// AVX-512 dense conv into channel blocks (dense_blocked.h): a zmm holds 16 output channels (two
// blocks) of one pixel; register tile 32 channels x 12 pixels (24 of the 32 zmm accumulate).
// GCC 12 warns about its own _mm512_undefined_ps inside the intrinsics (as in spmm_avx512.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/x86_intrinsics.h"

#include "kernels/dense_blocked.h"
#include "kernels/isa_parts.h"
#include "kernels/x86_zmm.h"

namespace sk {
namespace {

struct Avx512Dense : Zmm {
  static constexpr int kNC = 2, kNP = 12;
  static void store_y(float* y, ptrdiff_t ybs, T v, int nb) {
    _mm256_storeu_ps(y, low(v));
    if (nb > 1) _mm256_storeu_ps(y + ybs, high(v));
  }
  static T load_y(const float* y, ptrdiff_t ybs, int nb) {
    return join(_mm256_loadu_ps(y), nb > 1 ? _mm256_loadu_ps(y + ybs) : _mm256_setzero_ps());
  }
};

}  // namespace

void dense_c8_12x32_avx512(size_t n, const DenseMat& w, const float* x, int x_pstride, float* y,
                           ptrdiff_t y_bstride, const Epilogue& ep) {
  DenseBlocked<Avx512Dense>::run(n, w, x, x_pstride, y, y_bstride, ep);
}

}  // namespace sk
