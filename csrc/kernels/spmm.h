// Sparse x dense kernels in NCHW (kernels.h SpmmFn): one template for the SIMD ISAs over a
// vector policy V, as spmm_blocked.h and dwconv_blocked.h.
//
//   struct V {
//     using T;                       // kLanes floats of one row over consecutive pixels
//     using M;                       // what a partial vector needs (a mask, or a count)
//     static constexpr int kLanes;
//     static constexpr int kNV4;     // pixel vectors per B=4 tile (4 x kNV4 accumulators)
//     static constexpr int kNV1;     // pixel vectors per B=1 tile (2 x kNV1 accumulators)
//     static M full(); static M tail(size_t m);             // m in 1 .. kLanes-1
//     template <bool PART> static T load(const float* p, M m);   // PART: only m's lanes read,
//     template <bool PART> static void store(float* p, T v, M m); // written; the rest zero
//     static T zero(); static T set1(float f); static T add(T a, T b);
//     static T fma(T a, T b, T c);   // a * b + c
//     static T clamp(T v, T lo, T hi);  // min(hi, max(lo, v)); a NaN v stays NaN
//     using W; static W wload(const float* p);   // a block's 4 weights, as the FMA takes them
//     template <int b> static T fma_w(W w, T x, T acc);     // acc + w[b] * x
//   };
//
// B = 4: a register tile is 4 rows x kNV4*kLanes pixels; per nonzero block kNV4 loads of X,
// the block's 4 weights (4 broadcasts on x86, one load and lane-indexed FMAs on NEON) and
// 4*kNV4 FMAs.  B = 1 (unstructured): 1 row x kNV1*kLanes pixels, blocks taken two at a time
// into two accumulator sets (twice the independent FMA chains; unstructured rows are
// load-bound), summed before the store.  After the full tiles, each narrower width runs at
// most once (widest first), then one partial vector.
// The epilogue is fused at the store: bias initialises the accumulators, then (+ residual),
// clamp to [lo, hi], (+ residual after act).
// Pixels are walked in chunks of kChunk: all groups of the call run over one chunk's X columns
// (kept in cache) before the next chunk.  No alignment is assumed anywhere.
//
// Everything has internal linkage: each ISA file compiles its own copy with its own flags.
#pragma once

#include <cstddef>

#include "kernels/group_sum4.h"
#include "kernels/kernels.h"

namespace sk {
namespace {

template <class V>
struct Spmm {
  using T = typename V::T;
  using M = typename V::M;
  static constexpr int kL = V::kLanes;
  // Pixels per chunk: a multiple of every tile.  Measured on MobileNetV1's 1x1 layers at 90%
  // (AVX2): 960 was as good as or better than 24..240 and than no chunking on every shape;
  // small chunks lose to branch mispredictions (a group's block count changes every tile) and
  // to many short store streams.
  static constexpr size_t kChunk = 960;
  // Up to this many pixels after the last vector run through one_pixel_b4 (one multiply-add per
  // block and pixel) instead of a masked vector tile (four, mostly on empty lanes): a 7x7 plane
  // is three 16-pixel vectors and one pixel, and that pixel cost as much as 16.
  static constexpr size_t kOnePixelTail = 3;
  static_assert(kChunk % (V::kNV4 * kL) == 0 && kChunk % (V::kNV1 * kL) == 0,
                "chunks hold whole tiles");

  // The epilogue on one vector, then the store (PART: only the lanes in m).
  template <bool PART>
  static inline __attribute__((always_inline)) void store_out(float* dst, T acc,
                                                              const float* res, bool after,
                                                              T lo, T hi, M m) {
    T r = V::zero();
    if (res) r = V::template load<PART>(res, m);
    if (res && !after) acc = V::add(acc, r);
    acc = V::clamp(acc, lo, hi);
    if (res && after) acc = V::add(acc, r);
    V::template store<PART>(dst, acc, m);
  }

  template <int b, int NV>
  static inline __attribute__((always_inline)) void fma_row(T (&acc)[NV], const T (&xv)[NV],
                                                            typename V::W wj) {
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
      acc[v] = V::template fma_w<b>(wj, xv[v], acc[v]);
  }

  // What one call's tiles share.
  struct Args {
    const float* x;
    const int32_t* off;
    const float* val;
    float* y;
    ptrdiff_t ys;
    const Epilogue* ep;
    T lo, hi;
  };

  // One B = 4 tile: NV vectors of pixels from p x rows r0 .. r0+nr (nr <= 4), blocks j0..j1.
  template <int NV, bool PART>
  static inline __attribute__((always_inline)) void tile_b4(const Args& a, size_t p,
                                                            int32_t j0, int32_t j1, int r0,
                                                            int nr, M m) {
    const Epilogue& ep = *a.ep;
    T acc[4][NV];
    _Pragma("GCC unroll 4") for (int b = 0; b < 4; ++b) {
      const T init = (ep.bias && b < nr) ? V::set1(ep.bias[r0 + b]) : V::zero();
      _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) acc[b][v] = init;
    }
    const float* xp = a.x + p;
    for (int32_t j = j0; j < j1; ++j) {
      const float* xr = xp + a.off[j];
      T xv[NV];
      _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
        xv[v] = V::template load<PART>(xr + kL * v, m);
      const typename V::W wj = V::wload(a.val + 4 * static_cast<size_t>(j));
      fma_row<0>(acc[0], xv, wj);
      fma_row<1>(acc[1], xv, wj);
      fma_row<2>(acc[2], xv, wj);
      fma_row<3>(acc[3], xv, wj);
    }
    // b is a compile-time index after unrolling (a run-time bound would put acc in memory)
    _Pragma("GCC unroll 4") for (int b = 0; b < 4; ++b) {
      if (b >= nr) break;
      const int r = r0 + b;
      float* yr = a.y + r * a.ys + p;
      const float* rr = ep.residual ? ep.residual + r * ep.residual_stride + p : nullptr;
      _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
        store_out<PART>(yr + kL * v, acc[b][v], rr ? rr + kL * v : nullptr,
                        ep.residual_after_act, a.lo, a.hi, m);
    }
  }

  // One B = 1 tile: NV vectors of pixels from p x row r; two accumulator sets (even/odd
  // blocks) halve the FMA dependency chains.
  template <int NV, bool PART>
  static inline __attribute__((always_inline)) void tile_b1(const Args& a, size_t p,
                                                            int32_t j0, int32_t j1, int r,
                                                            int, M m) {
    const Epilogue& ep = *a.ep;
    T s[NV], c[NV];
    const T init = ep.bias ? V::set1(ep.bias[r]) : V::zero();
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
      s[v] = init;
      c[v] = V::zero();
    }
    const float* xp = a.x + p;
    int32_t j = j0;
    for (; j + 2 <= j1; j += 2) {
      const float* xs = xp + a.off[j];
      const float* xc = xp + a.off[j + 1];
      const T ws = V::set1(a.val[j]), wc = V::set1(a.val[j + 1]);
      _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
        s[v] = V::fma(ws, V::template load<PART>(xs + kL * v, m), s[v]);
        c[v] = V::fma(wc, V::template load<PART>(xc + kL * v, m), c[v]);
      }
    }
    if (j < j1) {
      const float* xs = xp + a.off[j];
      const T ws = V::set1(a.val[j]);
      _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
        s[v] = V::fma(ws, V::template load<PART>(xs + kL * v, m), s[v]);
    }
    float* yr = a.y + r * a.ys + p;
    const float* rr = ep.residual ? ep.residual + r * ep.residual_stride + p : nullptr;
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v)
      store_out<PART>(yr + kL * v, V::add(s[v], c[v]), rr ? rr + kL * v : nullptr,
                      ep.residual_after_act, a.lo, a.hi, m);
  }

  // The tiles of one group over pixels [p, pe): full NVM-vector tiles, then each narrower
  // width at most once, then a partial vector.  B4 picks the 4-row or the 1-row tile.
  template <bool B4, int NV>
  static inline __attribute__((always_inline)) void rest(const Args& a, size_t& p, size_t pe,
                                                         int32_t j0, int32_t j1, int r0,
                                                         int nr) {
    if constexpr (NV >= 1) {
      if (p + kL * NV <= pe) {
        if constexpr (B4)
          tile_b4<NV, false>(a, p, j0, j1, r0, nr, V::full());
        else
          tile_b1<NV, false>(a, p, j0, j1, r0, nr, V::full());
        p += kL * NV;
      }
      rest<B4, NV - 1>(a, p, pe, j0, j1, r0, nr);
    }
  }

  // B = 4 at one pixel (a classifier after pooling at batch 1, a 1x1 plane, a plane's last
  // pixels): a pixel tile would use one lane of each vector, 4 masked FMAs per block; here one
  // multiply-add per block (group_sum4.h).
  static void one_pixel_b4(const SpMat& w, int g_begin, int g_end, const float* x, float* y,
                           ptrdiff_t y_stride, const Epilogue& ep) {
    for (int g = g_begin; g < g_end; ++g) {
      const F4 acc = group_sum4(w.values, w.x_offset, w.group_ptr[g], w.group_ptr[g + 1], x);
      const int r0 = g * 4, nr = w.rows - r0 < 4 ? w.rows - r0 : 4;
      for (int b = 0; b < nr; ++b) {
        const int r = r0 + b;
        float v = acc[b] + (ep.bias ? ep.bias[r] : 0.0f);
        const float res = ep.residual ? ep.residual[r * ep.residual_stride] : 0.0f;
        if (!ep.residual_after_act) v += res;
        v = v < ep.lo ? ep.lo : v;  // a NaN stays NaN
        v = v > ep.hi ? ep.hi : v;
        if (ep.residual_after_act) v += res;
        y[r * y_stride] = v;
      }
    }
  }

  template <bool B4>
  static void run(size_t n, const SpMat& w, int g_begin, int g_end, const float* x, float* y,
                  ptrdiff_t y_stride, const Epilogue& ep) {
    if constexpr (B4) {
      if (n == 1) return one_pixel_b4(w, g_begin, g_end, x, y, y_stride, ep);
    }
    constexpr int NVM = B4 ? V::kNV4 : V::kNV1;
    const Args a{x, w.x_offset, w.values, y, y_stride, &ep, V::set1(ep.lo), V::set1(ep.hi)};
    for (size_t pc = 0; pc < n; pc += kChunk) {
      const size_t pe = n - pc < kChunk ? n : pc + kChunk;
      for (int g = g_begin; g < g_end; ++g) {
        const int32_t j0 = w.group_ptr[g], j1 = w.group_ptr[g + 1];
        const int r0 = B4 ? g * 4 : g;
        const int nr = B4 ? (w.rows - r0 < 4 ? w.rows - r0 : 4) : 1;
        size_t p = pc;
        for (; p + kL * NVM <= pe; p += kL * NVM) {
          if constexpr (B4)
            tile_b4<NVM, false>(a, p, j0, j1, r0, nr, V::full());
          else
            tile_b1<NVM, false>(a, p, j0, j1, r0, nr, V::full());
        }
        rest<B4, NVM - 1>(a, p, pe, j0, j1, r0, nr);
        if (p < pe) {
          if constexpr (B4) {
            if (pe - p <= kOnePixelTail) {  // 49 = 48 + 1: one pixel costs a whole tile
              for (; p < pe; ++p) {
                Epilogue e1 = ep;
                if (e1.residual) e1.residual += p;
                one_pixel_b4(w, g, g + 1, x + p, y + p, y_stride, e1);
              }
            } else {
              tile_b4<1, true>(a, p, j0, j1, r0, nr, V::tail(pe - p));
            }
          } else {
            tile_b1<1, true>(a, p, j0, j1, r0, nr, V::tail(pe - p));
          }
        }
      }
    }
  }
};

}  // namespace
}  // namespace sk
