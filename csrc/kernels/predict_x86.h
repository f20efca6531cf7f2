// What the x86 prediction kernels share (predict_avx2.cpp, predict_avx512vnni.cpp): the tile
// loop over output rows and pixels, the decision, and the full-precision pass.  They differ
// only in the integer dot product of a register tile, a `Dot` policy:
//
//   struct Dot {
//     static constexpr int kPixels;  // pixels per register tile
//     template <int V, int R>        // acc[v][r] lane i += sum_k wq[8(b+v)+i][k] * xq[r][k]
//     static void tile(const PredictMat& w, int b, const uint8_t* xq, int k_begin, int k_end,
//                      __m256i (&acc)[V][R]);      // over steps [k_begin, k_end) of 4 k
//   };
//
// The including file includes its intrinsics (<immintrin.h>, or x86_intrinsics.h for the
// AVX-512 files) first.  Everything here has internal linkage: each ISA file compiles its own copy with its own flags,
// so no symbol built for one ISA can be picked by the linker for another (isa_parts.h).
//
// Per tile of at most 64 output pixels: the whole tile is predicted first, 16 output rows (two
// vectors of 8 int32 lanes) at a time, K in chunks whose weights (16 rows x 1 KiB) stay in L1
// while every pixel passes over them; each output row's predicted-positive pixels are then
// computed in fp32, four at a time sharing the row's weight loads (FMA over each run of C
// contiguous channels).
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/predict_taps.h"

namespace sk {
namespace {

alignas(32) const int32_t kTail[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

// What a Dot's tile reads per step k of 4 k: the packed weights of its V blocks of 8 rows (8 rows
// x 4 k bytes each) and pixel r's 4 activation bytes, broadcast to every lane.
template <int V>
inline void load_weights(const PredictMat& w, int b, int k, __m256i (&wv)[V]) {
  const int8_t* wb = w.wq + static_cast<ptrdiff_t>(b) * w.K4 * 8 + k * 32;
  for (int v = 0; v < V; ++v)
    wv[v] = _mm256_load_si256(
        reinterpret_cast<const __m256i*>(wb + static_cast<ptrdiff_t>(v) * w.K4 * 8));
}

inline __m256i broadcast_pixel(const PredictMat& w, const uint8_t* xq, int r, int k) {
  int32_t xb;
  __builtin_memcpy(&xb, xq + static_cast<ptrdiff_t>(r) * w.K4 + 4 * k, 4);
  return _mm256_set1_epi32(xb);
}

// Pixels [p, p + R) of predict_blocks: accumulators kept in acc_mem between K chunks.
template <class Dot, int V, int R>
inline void predict_pixels(const PredictMat& w, int b, const uint8_t* xq, int p, int k_begin,
                           int k_end, __m256i (*acc_mem)[V]) {
  __m256i acc[V][R];
  for (int v = 0; v < V; ++v)
    for (int r = 0; r < R; ++r) acc[v][r] = acc_mem[p + r][v];
  Dot::template tile<V, R>(w, b, xq + static_cast<ptrdiff_t>(p) * w.K4, k_begin, k_end, acc);
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
// lane i: row 8(b+v)+i).
template <class Dot, int V, typename Sink>
void predict_blocks(const PredictMat& w, int b, int n, const uint8_t* xq, Sink&& sink) {
  constexpr int kChunk = 256;  // steps of 4 k
  alignas(32) __m256i acc[64][V];
  for (int p = 0; p < n; ++p)
    for (int v = 0; v < V; ++v) acc[p][v] = _mm256_setzero_si256();
  const int nk = w.K4 / 4;
  for (int k0 = 0; k0 < nk; k0 += kChunk) {
    const int k1 = std::min(nk, k0 + kChunk);
    int p = 0;
    for (; p + Dot::kPixels <= n; p += Dot::kPixels)
      predict_pixels<Dot, V, Dot::kPixels>(w, b, xq, p, k0, k1, acc);
    for (; p < n; ++p) predict_pixels<Dot, V, 1>(w, b, xq, p, k0, k1, acc);
  }
  for (int p = 0; p < n; ++p)
    for (int v = 0; v < V; ++v) sink(p, v, acc[p][v]);
}

// predict_blocks over all rows, two blocks at a time.
template <class Dot, typename Sink>
void predict_rows(const PredictMat& w, int n, const uint8_t* xq, float sx, int zx,
                  Sink&& sink) {
  const int nb = (w.M + 7) / 8;
  for (int b = 0; b < nb; b += 2) {
    if (b + 1 < nb) {
      const DecisionRows<2> d(w, b, sx, zx);
      predict_blocks<Dot, 2>(w, b, n, xq,
                             [&](int p, int v, __m256i a) { sink(d, b, p, v, a); });
    } else {
      const DecisionRows<1> d(w, b, sx, zx);
      predict_blocks<Dot, 1>(w, b, n, xq,
                             [&](int p, int v, __m256i a) { sink(d, b, p, v, a); });
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

// The PredictFn body: whole tile predicted first, then each row's positives computed together
// (the row's weights are loaded once per four pixels and no group is left part-filled across
// rows).
template <class Dot>
int64_t predict_x86(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                    uint8_t* scratch, float* y, ptrdiff_t y_stride) {
  return predict_tile_rows(
      w, img, p0, n, scratch, y, y_stride,
      [&](const uint8_t* xq, uint64_t* pos) {
        predict_rows<Dot>(w, n, xq, img.sx, img.zx,
                          [&](const auto& d, int b, int p, int v, __m256i a) {
                            mark(d, v, a, b, p, pos);
                          });
      },
      [&](int m, uint64_t bits, const float* const* runs, float* ym) {
        exact_row(w, m, bits, runs, ym);
      });
}

// The PredictUnitsFn body.
template <class Dot>
void predict_units_x86(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                       uint8_t* scratch, int32_t* u, ptrdiff_t u_stride) {
  gather_quantized(w, img, p0, n, scratch);
  predict_rows<Dot>(w, n, scratch, img.sx, img.zx,
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

}  // namespace
}  // namespace sk
