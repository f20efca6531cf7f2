// AVX2 ReLU-output prediction (kernels.h, PredictFn), compiled with -mavx2 -mfma.
//
// Prediction: 8 output rows per vector, 4 pixels at a time.  Per step of 4 k: one load of the
// rows' packed int8 weights (8 rows x 4 k), the pixel's 4 activation bytes broadcast as one
// int32, vpmaddubsw (u8 x s8, adjacent pairs summed to int16: activations are 7-bit, so
// 2 * 127 * 127 cannot saturate) and vpmaddwd with ones (pairs to int32).  Then the same fma
// as the reference decides; rows predicted positive get a full-precision dot product (8-wide
// FMA over K, two accumulators).
#include <immintrin.h>

#include "kernels/kernels.h"

namespace sk {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

alignas(32) const int32_t kTail[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

inline float dot(const float* a, const float* b, int K) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int k = 0;
  for (; k + 16 <= K; k += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), s1);
  }
  if (k + 8 <= K) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
    k += 8;
  }
  if (k < K) {
    const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTail + 8 - (K - k)));
    s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + k, m), _mm256_maskload_ps(b + k, m), s1);
  }
  return hsum(_mm256_add_ps(s0, s1));
}

// Predictions for rows [8b, 8b+8) and NP pixels starting at p: acc[i] lane r = row 8b + r.
template <int NP>
inline void predict_block(const PredictMat& w, int b, const uint8_t* xq, __m256i* acc) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int i = 0; i < NP; ++i) acc[i] = _mm256_setzero_si256();
  const int8_t* wb = w.wq + static_cast<ptrdiff_t>(b) * w.K4 * 8;
  for (int k4 = 0; k4 < w.K4 / 4; ++k4) {
    const __m256i wv = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + k4 * 32));
    for (int i = 0; i < NP; ++i) {
      int32_t xb;
      __builtin_memcpy(&xb, xq + static_cast<ptrdiff_t>(i) * w.K4 + k4 * 4, 4);
      const __m256i xv = _mm256_set1_epi32(xb);
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, wv), ones));
    }
  }
}

}  // namespace

int64_t predict_avx2(const PredictMat& w, size_t n, const uint8_t* xq, const float* xf, float sx,
                     int zx, float* y, ptrdiff_t y_stride) {
  int64_t computed = 0;
  const int nb = (w.M + 7) / 8;
  const __m256 zero = _mm256_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    const int rows = w.M - 8 * b < 8 ? w.M - 8 * b : 8;
    alignas(32) float scale[8] = {0}, bias[8] = {0};
    alignas(32) int32_t zsum[8] = {0};
    for (int r = 0; r < rows; ++r) {
      scale[r] = sx * w.wq_scale[8 * b + r];
      bias[r] = w.bias[8 * b + r];
      zsum[r] = zx * w.wq_rowsum[8 * b + r];
    }
    const __m256 vs = _mm256_load_ps(scale), vb = _mm256_load_ps(bias);
    const __m256i vz = _mm256_load_si256(reinterpret_cast<const __m256i*>(zsum));
    const int live = (1 << rows) - 1;
    size_t p = 0;
    auto finish = [&](size_t pp, __m256i a) {
      const __m256 pred = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(a, vz)), vs, vb);
      int mask = _mm256_movemask_ps(_mm256_cmp_ps(pred, zero, _CMP_GT_OQ)) & live;
      for (int r = 0; r < rows; ++r) y[(8 * b + r) * y_stride + static_cast<ptrdiff_t>(pp)] = 0.0f;
      while (mask) {
        const int r = __builtin_ctz(mask);
        mask &= mask - 1;
        const int m = 8 * b + r;
        float v = dot(w.w + static_cast<ptrdiff_t>(m) * w.K, xf + pp * w.K, w.K) + w.bias[m];
        v = v > 0.0f ? (v < w.hi ? v : w.hi) : 0.0f;
        y[m * y_stride + static_cast<ptrdiff_t>(pp)] = v;
        ++computed;
      }
    };
    for (; p + 4 <= n; p += 4) {
      __m256i acc[4];
      predict_block<4>(w, b, xq + p * w.K4, acc);
      for (int i = 0; i < 4; ++i) finish(p + i, acc[i]);
    }
    for (; p < n; ++p) {
      __m256i acc[1];
      predict_block<1>(w, b, xq + p * w.K4, acc);
      finish(p, acc[0]);
    }
  }
  return computed;
}

}  // namespace sk
