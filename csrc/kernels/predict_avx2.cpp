// AVX2 ReLU-output prediction (kernels.h, PredictFn), compiled with -mavx2 -mfma
// -ffp-contract=off (the quantization must round the product and the sum separately, as the
// reference does).  The tile loop, decision and full-precision pass are predict_x86.h's.
//
// Prediction tile: 16 output rows (two vectors of 8) x 4 pixels.  Per step of 4 k: one load of
// each 8-row block's packed weights (8 rows x 4 k bytes), each pixel's 4 activation bytes
// broadcast, vpmaddubsw (u8 x s8, adjacent pairs summed to int16).  The int16 results are
// summed for steps16 steps (low-bit weights keep them in range), then vpmaddwd with ones widens
// them into the int32 accumulators: with 4-bit weights one widening per 18 steps instead of one
// per step.  With 8-bit weights (steps16 = 1) each product is widened at once, so the int16
// partial sums take no registers (16 of them would not fit beside 8 accumulators).
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/predict_x86.h"

namespace sk {

// 7-bit activations as defined in kernels.h: 32 channels per step, then the same scalar ops.
void predict_quantize_avx2(const float* x, size_t n, int C, int C4, float sx, int zx,
                           uint8_t* xq) {
  const float inv = sx > 0.0f ? 1.0f / sx : 0.0f, off = float(zx) + 0.5f;
  const __m256 vi = _mm256_set1_ps(inv), vo = _mm256_set1_ps(off);
  const __m256 lo = _mm256_setzero_ps(), top = _mm256_set1_ps(127.0f);
  // packs/packus work within 128-bit lanes: this puts the four 8-byte groups back in order
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (size_t p = 0; p < n; ++p) {
    const float* f = x + p * C;
    uint8_t* q = xq + p * C4;
    int c = 0;
    for (; c + 32 <= C; c += 32) {
      __m256i v[4];
      for (int j = 0; j < 4; ++j) {
        const __m256 t = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(f + c + 8 * j), vi), vo);
        v[j] = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(t, lo), top));
      }
      const __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(v[0], v[1]),
                                            _mm256_packs_epi32(v[2], v[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c),
                          _mm256_permutevar8x32_epi32(b, order));
    }
    for (; c < C; ++c) {
      float t = f[c] * inv;
      t = t + off;
      t = t < 0.0f ? 0.0f : (t > 127.0f ? 127.0f : t);
      q[c] = uint8_t(int(t));
    }
    for (; c < C4; ++c) q[c] = 0;
  }
}

namespace {

struct DotAvx2 {
  static constexpr int kPixels = 4;

  template <int V, int R>
  static void tile(const PredictMat& w, int b, const uint8_t* xq, int k_begin, int k_end,
                   __m256i (&acc)[V][R]) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (w.steps16 == 1) {
      for (int k = k_begin; k < k_end; ++k) {
        __m256i wv[V];
        load_weights(w, b, k, wv);
        for (int r = 0; r < R; ++r) {
          const __m256i xv = broadcast_pixel(w, xq, r, k);
          for (int v = 0; v < V; ++v)
            acc[v][r] = _mm256_add_epi32(
                acc[v][r], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, wv[v]), ones));
        }
      }
      return;
    }
    for (int k0 = k_begin; k0 < k_end; k0 += w.steps16) {
      const int k1 = std::min(k_end, k0 + w.steps16);
      __m256i s[V][R];
      for (int v = 0; v < V; ++v)
        for (int r = 0; r < R; ++r) s[v][r] = _mm256_setzero_si256();
      for (int k = k0; k < k1; ++k) {
        __m256i wv[V];
        load_weights(w, b, k, wv);
        for (int r = 0; r < R; ++r) {
          const __m256i xv = broadcast_pixel(w, xq, r, k);
          for (int v = 0; v < V; ++v)
            s[v][r] = _mm256_add_epi16(s[v][r], _mm256_maddubs_epi16(xv, wv[v]));
        }
      }
      for (int v = 0; v < V; ++v)
        for (int r = 0; r < R; ++r)
          acc[v][r] = _mm256_add_epi32(acc[v][r], _mm256_madd_epi16(s[v][r], ones));
    }
  }
};

}  // namespace

int64_t predict_avx2(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                     uint8_t* scratch, float* y, ptrdiff_t y_stride) {
  return predict_x86<DotAvx2>(w, img, p0, n, scratch, y, y_stride);
}

void predict_units_avx2(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                        uint8_t* scratch, int32_t* u, ptrdiff_t u_stride) {
  predict_units_x86<DotAvx2>(w, img, p0, n, scratch, u, u_stride);
}

void predict_exact_avx2(const PredictMat& w, const PredictImage& img, int m, const int64_t* pix,
                        int cnt, float* out) {
  std::vector<const float*> runs(size_t(4) * w.runs);
  const float* const* group[4] = {runs.data(), runs.data() + w.runs, runs.data() + 2 * w.runs,
                                  runs.data() + 3 * w.runs};
  for (int i = 0; i < cnt; i += 4) {
    const int c = std::min(4, cnt - i);
    for (int j = 0; j < c; ++j) pixel_runs(w, img, pix[i + j], runs.data() + j * w.runs);
    exact_group(w, m, group, c, out + i);
  }
}

}  // namespace sk
