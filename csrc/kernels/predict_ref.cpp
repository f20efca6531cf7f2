// Scalar reference of the ReLU-output prediction kernels (kernels.h, QuantizeFn and PredictFn):
// the definition the SIMD versions are tested against.  Compiled with -ffp-contract=off: the
// quantization is a rounded product then a rounded sum, as in the numpy model
// (sparsekit.predict.prediction_units).
#include <cmath>
#include <vector>

#include "kernels/predict_taps.h"

namespace sk {

void predict_quantize_ref(const float* x, size_t n, int C, int C4, float sx, int zx,
                          uint8_t* xq) {
  const float inv = sx > 0.0f ? 1.0f / sx : 0.0f, off = float(zx) + 0.5f;
  for (size_t p = 0; p < n; ++p) {
    const float* f = x + p * C;
    uint8_t* q = xq + p * C4;
    for (int c = 0; c < C; ++c) {
      float t = f[c] * inv;
      t = t + off;
      t = t < 0.0f ? 0.0f : (t > 127.0f ? 127.0f : t);
      q[c] = uint8_t(int(t));  // t >= 0: truncation is floor
    }
    for (int c = C; c < C4; ++c) q[c] = 0;
  }
}

namespace {

int32_t units(const PredictMat& w, const PredictImage& img, int m, const uint8_t* xp) {
  // row m of the packed weights: block m/8, lane m%8, 4 k per step
  const int8_t* wb = w.wq + static_cast<ptrdiff_t>(m / 8) * w.K4 * 8 + (m % 8) * 4;
  int32_t acc = 0;
  for (int k4 = 0; k4 < w.K4 / 4; ++k4)
    for (int j = 0; j < 4; ++j) acc += int32_t(wb[k4 * 32 + j]) * int32_t(xp[k4 * 4 + j]);
  return acc - img.zx * w.wq_rowsum[m];
}

float exact(const PredictMat& w, const PredictImage& img, int m, int64_t p,
            std::vector<const float*>& runs) {
  const float* wf = w.w + static_cast<ptrdiff_t>(m) * w.taps * w.C;
  pixel_runs(w, img, p, runs.data());
  float v = 0.0f;
  for (int r = 0; r < w.runs; ++r)
    for (int j = 0; j < w.run_len; ++j) v += wf[r * w.run_len + j] * runs[size_t(r)][j];
  v += w.bias[m];
  return v > 0.0f ? (v < w.hi ? v : w.hi) : 0.0f;
}

}  // namespace

void predict_units_ref(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                       uint8_t* scratch, int32_t* u, ptrdiff_t u_stride) {
  gather_quantized(w, img, p0, n, scratch);
  for (int m = 0; m < w.M; ++m)
    for (int p = 0; p < n; ++p)
      u[m * u_stride + p] = units(w, img, m, scratch + static_cast<ptrdiff_t>(p) * w.K4);
}

void predict_exact_ref(const PredictMat& w, const PredictImage& img, int m, const int64_t* pix,
                       int cnt, float* out) {
  std::vector<const float*> runs(size_t(w.runs));
  for (int i = 0; i < cnt; ++i) out[i] = exact(w, img, m, pix[i], runs);
}

int64_t predict_ref(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                    uint8_t* scratch, float* y, ptrdiff_t y_stride) {
  gather_quantized(w, img, p0, n, scratch);
  std::vector<const float*> runs(size_t(w.runs));
  int64_t computed = 0;
  for (int m = 0; m < w.M; ++m) {
    const float scale = img.sx * w.wq_scale[m];
    for (int p = 0; p < n; ++p) {
      const int32_t a = units(w, img, m, scratch + static_cast<ptrdiff_t>(p) * w.K4);
      const float pred = std::fma(static_cast<float>(a + w.margin), scale, w.bias[m]);
      float out = 0.0f;
      if (pred > 0.0f) {
        out = exact(w, img, m, p0 + p, runs);
        ++computed;
      }
      y[m * y_stride + p] = out;
    }
  }
  return computed;
}

}  // namespace sk
