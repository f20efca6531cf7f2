// Reference dense conv into channel blocks: plain loops over kernels.h's DenseBlockedFn
// definition, independent of dense_blocked.h's tiling.
#include "kernels/isa_parts.h"

namespace sk {

void dense_c8_ref(size_t n, const DenseMat& w, const float* x, int x_pstride, float* y,
                  ptrdiff_t y_bstride, const Epilogue& ep) {
  constexpr int L = kChannelBlock;
  const int nblk = (w.rows + L - 1) / L, m16 = dense_m16(w.rows);
  for (int r = 0; r < nblk * L; ++r) {
    const ptrdiff_t blk = r / L, lane = r % L;
    for (size_t p = 0; p < n; ++p) {
      float acc = ep.bias ? ep.bias[r] : 0.0f;
      for (int t = 0; t < w.taps; ++t)
        acc += w.values[static_cast<size_t>(t) * m16 + r] *
               x[w.x_offset[t] + static_cast<ptrdiff_t>(p) * x_pstride];
      const ptrdiff_t at = static_cast<ptrdiff_t>(p) * L + lane;
      const float res = ep.residual ? ep.residual[blk * ep.residual_stride + at] : 0.0f;
      if (!ep.residual_after_act) acc += res;
      acc = acc < ep.lo ? ep.lo : acc;  // a NaN stays NaN
      acc = acc > ep.hi ? ep.hi : acc;
      if (ep.residual_after_act) acc += res;
      y[blk * y_bstride + at] = acc;
    }
  }
}

}  // namespace sk
