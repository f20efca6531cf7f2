// AVX2 ReLU-output prediction (kernels.h, PredictFn), compiled with -mavx2 -mfma
// -ffp-contract=off (the quantization must round the product and the sum separately, as the
// reference does).
//
// Prediction tile: 16 output rows (two vectors of 8) x 4 pixels.  Per step of 4 k: one load of
// each 8-row block's packed weights (8 rows x 4 k bytes), each pixel's 4 activation bytes
// broadcast, vpmaddubsw (u8 x s8, adjacent pairs summed to int16).  The int16 results are
// summed for steps16 steps (low-bit weights keep them in range), then vpmaddwd with ones widens
// them into the int32 accumulators: with 4-bit weights one widening per 18 steps instead of one
// per step.  K runs in chunks whose weights stay in L1.  After the whole tile is predicted, each
// output row's predicted-positive pixels are computed in fp32, four at a time sharing the row's
// weight loads (FMA over each tap's C contiguous channels).
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/predict_taps.h"

namespace sk {
namespace {

alignas(32) const int32_t kTail[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
constexpr int kPixels = 4;  // pixels per prediction tile

}  // namespace

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

// Integer predictions of V blocks of 8 rows (from block b) for R pixels over steps [k_begin,
// k_end) of 4 k, added to acc: acc[v][r] lane i += sum_k wq[8(b+v)+i][k] * xq[r][k].
template <int V, int R>
inline void predict_tile(const PredictMat& w, int b, const uint8_t* xq, int k_begin, int k_end,
                         __m256i (&acc)[V][R]) {
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* wb = w.wq + static_cast<ptrdiff_t>(b) * w.K4 * 8;
  for (int k0 = k_begin; k0 < k_end; k0 += w.steps16) {
    const int k1 = std::min(k_end, k0 + w.steps16);
    __m256i s[V][R];
    for (int v = 0; v < V; ++v)
      for (int r = 0; r < R; ++r) s[v][r] = _mm256_setzero_si256();
    for (int k = k0; k < k1; ++k) {
      __m256i wv[V];
      for (int v = 0; v < V; ++v)
        wv[v] = _mm256_load_si256(
            reinterpret_cast<const __m256i*>(wb + static_cast<ptrdiff_t>(v) * w.K4 * 8 + k * 32));
      for (int r = 0; r < R; ++r) {
        int32_t xb;
        __builtin_memcpy(&xb, xq + static_cast<ptrdiff_t>(r) * w.K4 + 4 * k, 4);
        const __m256i xv = _mm256_set1_epi32(xb);
        for (int v = 0; v < V; ++v)
          s[v][r] = _mm256_add_epi16(s[v][r], _mm256_maddubs_epi16(xv, wv[v]));
      }
    }
    for (int v = 0; v < V; ++v)
      for (int r = 0; r < R; ++r)
        acc[v][r] = _mm256_add_epi32(acc[v][r], _mm256_madd_epi16(s[v][r], ones));
  }
}

// Pixels [p, p + R) of predict_blocks: accumulators kept in acc_mem between K chunks.
template <int V, int R>
inline void predict_pixels(const PredictMat& w, int b, const uint8_t* xq, int p, int k_begin,
                           int k_end, __m256i (*acc_mem)[V]) {
  __m256i acc[V][R];
  for (int v = 0; v < V; ++v)
    for (int r = 0; r < R; ++r) acc[v][r] = acc_mem[p + r][v];
  predict_tile<V, R>(w, b, xq + static_cast<ptrdiff_t>(p) * w.K4, k_begin, k_end, acc);
  for (int v = 0; v < V; ++v)
    for (int r = 0; r < R; ++r) acc_mem[p + r][v] = acc[v][r];
}

inline __m256 mask_tail(int rem) {
  return _mm256_castsi256_ps(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTail + 8 - rem)));
}

// Dot products of N pixels' runs with weight row wr ([nruns][C]), in the low N lanes:
// runs[j][t] points to pixel j's C floats of run t.
template <int N>
inline __m128 dot_runs(const float* const* const* runs, const float* wr, int nruns, int C) {
  __m256 s[8];
  for (int i = 0; i < 8; ++i) s[i] = _mm256_setzero_ps();
  const __m256i tail = _mm256_castps_si256(mask_tail(C % 8 ? C % 8 : 8));
  for (int t = 0; t < nruns; ++t, wr += C) {
    const float* a[N];
    for (int j = 0; j < N; ++j) a[j] = runs[j][t];
    int c = 0;
    for (; c + 16 <= C; c += 16) {
      const __m256 w0 = _mm256_loadu_ps(wr + c), w1 = _mm256_loadu_ps(wr + c + 8);
      for (int j = 0; j < N; ++j) {
        s[j] = _mm256_fmadd_ps(_mm256_loadu_ps(a[j] + c), w0, s[j]);
        s[4 + j] = _mm256_fmadd_ps(_mm256_loadu_ps(a[j] + c + 8), w1, s[4 + j]);
      }
    }
    if (c + 8 <= C) {
      const __m256 w0 = _mm256_loadu_ps(wr + c);
      for (int j = 0; j < N; ++j) s[j] = _mm256_fmadd_ps(_mm256_loadu_ps(a[j] + c), w0, s[j]);
      c += 8;
    }
    if (c < C) {
      const __m256 w0 = _mm256_maskload_ps(wr + c, tail);
      for (int j = 0; j < N; ++j)
        s[4 + j] = _mm256_fmadd_ps(_mm256_maskload_ps(a[j] + c, tail), w0, s[4 + j]);
    }
  }
  for (int i = 0; i < 4; ++i) s[i] = _mm256_add_ps(s[i], s[4 + i]);
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// dot_runs for c = 1..4 pixels, activation applied: out[0..c).
inline void exact_group(const PredictMat& w, int m, const float* const* const* group, int c,
                        float* out) {
  const float* wr = w.w + static_cast<ptrdiff_t>(m) * w.taps * w.C;
  const __m128 v = c == 4   ? dot_runs<4>(group, wr, w.runs, w.run_len)
                   : c == 3 ? dot_runs<3>(group, wr, w.runs, w.run_len)
                   : c == 2 ? dot_runs<2>(group, wr, w.runs, w.run_len)
                            : dot_runs<1>(group, wr, w.runs, w.run_len);
  alignas(16) float o[4];
  _mm_store_ps(o, _mm_min_ps(_mm_max_ps(_mm_add_ps(v, _mm_set1_ps(w.bias[m])), _mm_setzero_ps()),
                             _mm_set1_ps(w.hi)));
  for (int j = 0; j < c; ++j) out[j] = o[j];
}

// Marks pixel p in positive[m] for the rows of block b + v predicted positive.
template <int V>
inline void mark(const DecisionRows<V>& d, int v, __m256i acc, int b, int p,
                 uint64_t* positive) {
  const __m256i a = _mm256_sub_epi32(
      acc, _mm256_load_si256(reinterpret_cast<const __m256i*>(d.shift + 8 * v)));
  const __m256 pred = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_load_ps(d.scale + 8 * v),
                                      _mm256_load_ps(d.bias + 8 * v));
  int mask =
      _mm256_movemask_ps(_mm256_cmp_ps(pred, _mm256_setzero_ps(), _CMP_GT_OQ)) & d.live[v];
  while (mask) {
    positive[8 * (b + v) + __builtin_ctz(mask)] |= uint64_t(1) << p;
    mask &= mask - 1;
  }
}

// Integer predictions of blocks [b, b+V) for all n pixels, handed to sink(p, v, acc) (acc
// lane i: row 8(b+v)+i).  K in chunks whose weights (16 rows x 1 KiB) stay in L1 while every
// pixel passes over them.
template <int V, typename Sink>
void predict_blocks(const PredictMat& w, int b, int n, const uint8_t* xq, Sink&& sink) {
  constexpr int kChunk = 256;  // steps of 4 k
  alignas(32) __m256i acc[64][V];
  for (int p = 0; p < n; ++p)
    for (int v = 0; v < V; ++v) acc[p][v] = _mm256_setzero_si256();
  const int nk = w.K4 / 4;
  for (int k0 = 0; k0 < nk; k0 += kChunk) {
    const int k1 = std::min(nk, k0 + kChunk);
    int p = 0;
    for (; p + kPixels <= n; p += kPixels) predict_pixels<V, kPixels>(w, b, xq, p, k0, k1, acc);
    for (; p < n; ++p) predict_pixels<V, 1>(w, b, xq, p, k0, k1, acc);
  }
  for (int p = 0; p < n; ++p)
    for (int v = 0; v < V; ++v) sink(p, v, acc[p][v]);
}

// predict_blocks over all rows, two blocks at a time.
template <typename Sink>
void predict_rows(const PredictMat& w, int n, const uint8_t* xq, float sx, int zx,
                  Sink&& sink) {
  const int nb = (w.M + 7) / 8;
  for (int b = 0; b < nb; b += 2) {
    if (b + 1 < nb) {
      const DecisionRows<2> d(w, b, sx, zx);
      predict_blocks<2>(w, b, n, xq, [&](int p, int v, __m256i a) { sink(d, b, p, v, a); });
    } else {
      const DecisionRows<1> d(w, b, sx, zx);
      predict_blocks<1>(w, b, n, xq, [&](int p, int v, __m256i a) { sink(d, b, p, v, a); });
    }
  }
}

// Full precision for row m at the pixels marked in `bits` (runs: each pixel's taps), four
// pixels sharing each load of the weight row; written to y[p] (row m's outputs).
inline void exact_row(const PredictMat& w, int m, uint64_t bits, const float* const* runs,
                      float* y) {
  const float* const* group[4];
  while (bits) {
    int pix[4], c = 0;
    for (; c < 4 && bits; ++c) {
      pix[c] = __builtin_ctzll(bits);
      bits &= bits - 1;
      group[c] = runs + pix[c] * w.runs;
    }
    float out[4];
    exact_group(w, m, group, c, out);
    for (int j = 0; j < c; ++j) y[pix[j]] = out[j];
  }
}

}  // namespace

int64_t predict_avx2(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                     uint8_t* scratch, float* y, ptrdiff_t y_stride) {
  // Whole tile predicted first, then each row's positives computed together: the row's
  // weights are loaded once per four pixels and no group is left part-filled across rows.
  return predict_tile_rows(
      w, img, p0, n, scratch, y, y_stride,
      [&](const uint8_t* xq, uint64_t* pos) {
        predict_rows(w, n, xq, img.sx, img.zx, [&](const auto& d, int b, int p, int v,
                                                   __m256i a) { mark(d, v, a, b, p, pos); });
      },
      [&](int m, uint64_t bits, const float* const* runs, float* ym) {
        exact_row(w, m, bits, runs, ym);
      });
}

void predict_units_avx2(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                        uint8_t* scratch, int32_t* u, ptrdiff_t u_stride) {
  gather_quantized(w, img, p0, n, scratch);
  predict_rows(w, n, scratch, img.sx, img.zx,
               [&](const auto& d, int b, int p, int v, __m256i a) {
                 alignas(32) int32_t lanes[8];
                 _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), a);
                 const int rows = std::min(8, w.M - 8 * (b + v));
                 for (int i = 0; i < rows; ++i) {
                   const int m = 8 * (b + v) + i;
                   // shift = zx * rowsum - margin: the units exclude the margin
                   u[m * u_stride + p] = lanes[i] - d.shift[8 * v + i] - w.margin;
                 }
               });
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
