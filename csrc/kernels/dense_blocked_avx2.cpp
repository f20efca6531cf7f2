// AVX2 dense conv into channel blocks (dense_blocked.h): a ymm is one block (8 output
// channels) of one pixel; register tile 16 channels x 6 pixels (12 of the 16 ymm accumulate).
#include "kernels/x86_intrinsics.h"

#include "kernels/dense_blocked.h"
#include "kernels/isa_parts.h"
#include "kernels/x86_ymm.h"

namespace sk {
namespace {

struct Avx2Dense : Ymm {
  static constexpr int kNC = 2, kNP = 6;
  static void store_y(float* y, ptrdiff_t, T v, int) { _mm256_storeu_ps(y, v); }
  static T load_y(const float* y, ptrdiff_t, int) { return _mm256_loadu_ps(y); }
};

}  // namespace

void dense_c8_6x16_avx2(size_t n, const DenseMat& w, const float* x, int x_pstride, float* y,
                        ptrdiff_t y_bstride, const Epilogue& ep) {
  DenseBlocked<Avx2Dense>::run(n, w, x, x_pstride, y, y_bstride, ep);
}

}  // namespace sk
