// What the prediction kernels of every ISA share (kernels.h): where an output pixel's input runs
// lie in the padded channels-last image, the tile driver (gather, predict, exact pass per row)
// and the per-row constants of the decision.
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"

namespace sk {

// Padded pixel index of run r of output pixel (oy, ox) (kernels.h: a kernel row, or a tap).
inline int64_t run_pixel(const PredictMat& w, const PredictImage& img, int64_t oy, int64_t ox,
                         int r) {
  const bool rows = w.runs == img.kh && img.kw > 1;  // one run per kernel row
  const int ky = rows || img.kw == 1 ? r : r / img.kw, kx = rows || img.kw == 1 ? 0 : r % img.kw;
  return (oy * img.sh + int64_t(ky) * img.dh) * img.Wp + ox * img.sw + int64_t(kx) * img.dw;
}

// The 7-bit activations of pixels [p0, p0 + n) as rows of K4 bytes, run after run.
inline void gather_quantized(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                             uint8_t* rows) {
  for (int i = 0; i < n; ++i) {
    const int64_t oy = (p0 + i) / img.OW, ox = (p0 + i) % img.OW;
    uint8_t* d = rows + static_cast<ptrdiff_t>(i) * w.K4;
    for (int r = 0; r < w.runs; ++r, d += w.run_len4)
      std::memcpy(d, img.xq + run_pixel(w, img, oy, ox, r) * w.C4, size_t(w.run_len4));
  }
}

// Pointers to the fp32 runs of output pixel p (run_len floats each).
inline void pixel_runs(const PredictMat& w, const PredictImage& img, int64_t p,
                       const float** runs) {
  const int64_t oy = p / img.OW, ox = p % img.OW;
  for (int r = 0; r < w.runs; ++r) runs[r] = img.x + run_pixel(w, img, oy, ox, r) * w.C;
}

// The tile driver of every ISA's PredictFn: the tile's 7-bit rows gathered, predict(scratch,
// pos) marking the whole tile (bit p of pos[m]: output (m, p0 + p) predicted positive), then
// exact_row(m, pos[m], runs, y_row) computing each row's marked pixels (runs: each pixel's
// w.runs input runs).  Returns how many outputs were computed.
template <typename Predict, typename ExactRow>
int64_t predict_tile_rows(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                          uint8_t* scratch, float* y, ptrdiff_t y_stride, Predict&& predict,
                          ExactRow&& exact_row) {
  gather_quantized(w, img, p0, n, scratch);
  uint64_t small[1024];
  std::vector<uint64_t> heap;
  uint64_t* pos = small;
  if (w.M > 1024) {
    heap.assign(size_t(w.M), 0);
    pos = heap.data();
  } else {
    std::fill(small, small + w.M, 0);
  }
  predict(static_cast<const uint8_t*>(scratch), pos);
  std::vector<const float*> runs(size_t(n) * w.runs);
  for (int i = 0; i < n; ++i) pixel_runs(w, img, p0 + i, runs.data() + i * w.runs);
  int64_t computed = 0;
  for (int m = 0; m < w.M; ++m) {
    float* ym = y + static_cast<ptrdiff_t>(m) * y_stride;
    std::fill(ym, ym + n, 0.0f);
    exact_row(m, pos[m], static_cast<const float* const*>(runs.data()), ym);
    computed += __builtin_popcountll(pos[m]);
  }
  return computed;
}

// Per-row constants of the decision fma(float(acc - shift), scale, bias) > 0 for the 8*V rows
// from block b (kernels.h); rows past M have their live bit clear.
template <int V>
struct DecisionRows {
  alignas(32) float scale[8 * V], bias[8 * V];
  alignas(32) int32_t shift[8 * V];  // zx * rowsum - margin
  unsigned live[V];                  // rows that exist, per block

  DecisionRows(const PredictMat& w, int b, float sx, int zx) {
    for (int i = 0; i < 8 * V; ++i) {
      const int m = 8 * b + i;
      const bool ok = m < w.M;
      scale[i] = ok ? sx * w.wq_scale[m] : 0.0f;
      bias[i] = ok ? w.bias[m] : 0.0f;
      shift[i] = ok ? zx * w.wq_rowsum[m] - w.margin : 0;
    }
    for (int v = 0; v < V; ++v) live[v] = (1u << std::min(8, w.M - 8 * (b + v))) - 1;
  }
};

}  // namespace sk
