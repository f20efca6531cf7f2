// A dense conv into channel blocks (kernels.h DenseBlockedFn), one template for the SIMD ISAs
// over a vector policy V:
//
//   struct V {
//     using T;                          // kLanes output channels of one pixel
//     static constexpr int kLanes;      // 16 (two blocks), 8 (one) or 4 (half a block)
//     static constexpr int kNC, kNP;    // register tile: kNC channel vectors x kNP pixels
//     static T load(const float* p); static T zero(); static T set1(float f);
//     static T fma(T a, T b, T c); static T add(T a, T b); static T clamp(T v, T lo, T hi);
//     // kLanes channels at y (lane 0's address; block strides ybs apart when kLanes > 8),
//     // of which the first nb blocks exist (nb < kLanes / 8 only at the last block)
//     static void store_y(float* y, ptrdiff_t ybs, T v, int nb);
//     static T load_y(const float* y, ptrdiff_t ybs, int nb);  // the rest 0
//   };
//
// Why this shape: the 1x4 SpMM vectorises over pixels, which in channel blocks costs a
// transpose of X into a panel and of every output tile back into lines (spmm_blocked.h).  When
// every weight is kept (a stem: 27 taps x 32 channels; a dense 1x1 bridge) the product can run
// the other way round: a register holds kLanes output channels of one pixel, which is exactly
// a piece of a Y line, and each tap costs kNC weight loads (L1: the whole matrix is a few KiB)
// and kNP broadcasts of one input each for kNC*kNP FMAs.  Same FMA count as the pixel tile of a
// dense matrix, and no shuffles at all.
//
// Everything has internal linkage: each ISA file compiles its own copy with its own flags.
#pragma once

#include <cstddef>

#include "kernels/kernels.h"

namespace sk {
namespace {

template <class V>
struct DenseBlocked {
  using T = typename V::T;
  static constexpr int kL = V::kLanes;
  static constexpr int kB = kChannelBlock;

  // NC channel vectors (from vector c) x NP pixels (from pixel p); XPS: X's pixel stride.
  template <int NC, int NP, int XPS>
  static inline __attribute__((always_inline)) void tile(const DenseMat& w, int m16, int nblk,
                                                         int c, const float* x, size_t p,
                                                         float* y, ptrdiff_t ybs,
                                                         const Epilogue& ep) {
    T acc[NC][NP];
    _Pragma("GCC unroll 4") for (int i = 0; i < NC; ++i) {
      const T init = ep.bias ? V::load(ep.bias + (c + i) * kL) : V::zero();
      _Pragma("GCC unroll 16") for (int q = 0; q < NP; ++q) acc[i][q] = init;
    }
    const float* xp = x + p * XPS;
    const float* wt = w.values + c * kL;
    for (int t = 0; t < w.taps; ++t, wt += m16) {
      const float* xr = xp + w.x_offset[t];
      T wv[NC];
      _Pragma("GCC unroll 4") for (int i = 0; i < NC; ++i) wv[i] = V::load(wt + i * kL);
      _Pragma("GCC unroll 16") for (int q = 0; q < NP; ++q) {
        const T xb = V::set1(xr[q * XPS]);
        _Pragma("GCC unroll 4") for (int i = 0; i < NC; ++i) acc[i][q] = V::fma(wv[i], xb, acc[i][q]);
      }
    }
    const T lo = V::set1(ep.lo), hi = V::set1(ep.hi);
    _Pragma("GCC unroll 4") for (int i = 0; i < NC; ++i) {
      const int ch = (c + i) * kL;  // the vector's first channel
      const int nb = kL > kB ? (nblk - ch / kB < kL / kB ? nblk - ch / kB : kL / kB) : 1;
      const ptrdiff_t at = (ch / kB) * ybs + static_cast<ptrdiff_t>(p) * kB + ch % kB;
      const ptrdiff_t rat = (ch / kB) * ep.residual_stride + static_cast<ptrdiff_t>(p) * kB + ch % kB;
      _Pragma("GCC unroll 16") for (int q = 0; q < NP; ++q) {
        T v = acc[i][q];
        if (ep.residual) {
          const T r = V::load_y(ep.residual + rat + q * kB, ep.residual_stride, nb);
          if (!ep.residual_after_act) v = V::add(v, r);
          v = V::clamp(v, lo, hi);
          if (ep.residual_after_act) v = V::add(v, r);
        } else {
          v = V::clamp(v, lo, hi);
        }
        V::store_y(y + at + q * kB, ybs, v, nb);
      }
    }
  }

  // The pixel tiles narrower than kNP, widest first (each width at most once).
  template <int NC, int NP, int XPS>
  static inline __attribute__((always_inline)) void rest(const DenseMat& w, int m16, int nblk,
                                                         int c, const float* x, size_t& p,
                                                         size_t n, float* y, ptrdiff_t ybs,
                                                         const Epilogue& ep) {
    if constexpr (NP >= 1) {
      if (p + NP <= n) {
        tile<NC, NP, XPS>(w, m16, nblk, c, x, p, y, ybs, ep);
        p += NP;
      }
      rest<NC, NP - 1, XPS>(w, m16, nblk, c, x, p, n, y, ybs, ep);
    }
  }

  // Channel vectors [c, c + NC) over all n pixels.
  template <int NC, int XPS>
  static void columns(const DenseMat& w, int m16, int nblk, int c, const float* x, size_t n,
                      float* y, ptrdiff_t ybs, const Epilogue& ep) {
    size_t p = 0;
    for (; p + V::kNP <= n; p += V::kNP) tile<NC, V::kNP, XPS>(w, m16, nblk, c, x, p, y, ybs, ep);
    rest<NC, V::kNP - 1, XPS>(w, m16, nblk, c, x, p, n, y, ybs, ep);
  }

  // The last channel vectors (fewer than kNC): one instantiation per count.
  template <int NC, int XPS>
  static void last_columns(int left, const DenseMat& w, int m16, int nblk, int c,
                           const float* x, size_t n, float* y, ptrdiff_t ybs,
                           const Epilogue& ep) {
    if constexpr (NC >= 1) {
      if (left == NC) return columns<NC, XPS>(w, m16, nblk, c, x, n, y, ybs, ep);
      last_columns<NC - 1, XPS>(left, w, m16, nblk, c, x, n, y, ybs, ep);
    }
  }

  template <int XPS>
  static void run_stride(size_t n, const DenseMat& w, const float* x, float* y, ptrdiff_t ybs,
                         const Epilogue& ep) {
    const int nblk = (w.rows + kB - 1) / kB, m16 = dense_m16(w.rows);
    const int nvec = (nblk * kB + kL - 1) / kL;  // channel vectors covering every block
    int c = 0;
    for (; c + V::kNC <= nvec; c += V::kNC) columns<V::kNC, XPS>(w, m16, nblk, c, x, n, y, ybs, ep);
    if (c < nvec) last_columns<V::kNC - 1, XPS>(nvec - c, w, m16, nblk, c, x, n, y, ybs, ep);
  }

  static void run(size_t n, const DenseMat& w, const float* x, int x_pstride, float* y,
                  ptrdiff_t ybs, const Epilogue& ep) {
    if (x_pstride == kB)
      run_stride<kB>(n, w, x, y, ybs, ep);
    else
      run_stride<1>(n, w, x, y, ybs, ep);
  }
};

}  // namespace
}  // namespace sk
