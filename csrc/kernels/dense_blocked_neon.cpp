// aarch64 NEON dense conv into channel blocks (dense_blocked.h): a q register is half a block
// (4 output channels) of one pixel; register tile 16 channels x 4 pixels (16 of the 32 q
// registers accumulate).  Correctness only under qemu.
#include "kernels/dense_blocked.h"
#include "kernels/isa_parts.h"
#include "kernels/neon_q.h"

namespace sk {
namespace {

struct NeonDense : Q4 {
  static constexpr int kNC = 4, kNP = 4;
  static T fma(T a, T b, T c) { return vfmaq_f32(c, a, b); }  // a * b + c
  static void store_y(float* y, ptrdiff_t, T v, int) { vst1q_f32(y, v); }
  static T load_y(const float* y, ptrdiff_t, int) { return vld1q_f32(y); }
};

}  // namespace

void dense_c8_4x16_neon(size_t n, const DenseMat& w, const float* x, int x_pstride, float* y,
                        ptrdiff_t y_bstride, const Epilogue& ep) {
  DenseBlocked<NeonDense>::run(n, w, x, x_pstride, y, y_bstride, ep);
}

}  // namespace sk
