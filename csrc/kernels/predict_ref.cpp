// Scalar reference of the ReLU-output prediction kernel (kernels.h, PredictFn): the definition
// the SIMD versions are tested against.
#include <cmath>

#include "kernels/kernels.h"

namespace sk {

int64_t predict_ref(const PredictMat& w, size_t n, const uint8_t* xq, const float* xf, float sx,
                    int zx, float* y, ptrdiff_t y_stride) {
  int64_t computed = 0;
  for (int m = 0; m < w.M; ++m) {
    // row m of the packed int8 weights: block m/8, lane m%8, 4 k per step
    const int8_t* wb = w.wq + static_cast<ptrdiff_t>(m / 8) * w.K4 * 8 + (m % 8) * 4;
    const float scale = sx * w.wq_scale[m];
    const float* wf = w.w + static_cast<ptrdiff_t>(m) * w.K;
    for (size_t p = 0; p < n; ++p) {
      const uint8_t* xp = xq + p * w.K4;
      int32_t acc = 0;
      for (int k4 = 0; k4 < w.K4 / 4; ++k4)
        for (int j = 0; j < 4; ++j) acc += int32_t(wb[k4 * 32 + j]) * int32_t(xp[k4 * 4 + j]);
      const float pred =
          std::fma(static_cast<float>(acc - zx * w.wq_rowsum[m]), scale, w.bias[m]);
      float out = 0.0f;
      if (pred > 0.0f) {
        const float* xr = xf + p * w.K;
        float v = 0.0f;
        for (int k = 0; k < w.K; ++k) v += wf[k] * xr[k];
        v += w.bias[m];
        out = v > 0.0f ? (v < w.hi ? v : w.hi) : 0.0f;
        ++computed;
      }
      y[m * y_stride + static_cast<ptrdiff_t>(p)] = out;
    }
  }
  return computed;
}

}  // namespace sk
