// Depthwise convolution on channel blocks (NCHWc, kChannelBlock = 8 channels per block), one
// template for the SIMD ISAs over a vector policy V (as predict_x86.h does with its Dot policy):
//
//   struct V {
//     using T;                        // register type: 8 lanes, one pixel's block
//     static constexpr int kStrip;    // registers of accumulators per interior tile (<= 16)
//     static constexpr int kPairMaxWidth;  // rows up to this wide: two blocks per tile (not
//                                          // with Duo below)
//     static T wload(const float* p); // 8 weights (or a bias)
//     static T load(const float* p);  // one pixel's block
//     static void store(float* p, T v);
//     static T fma(T a, T b, T c);    // a * b + c
//     static T add(T a, T b);
//     static T clamp(T v, T lo, T hi);  // min(hi, max(lo, v)), a NaN stays NaN
//     static T set1(float f);
//     // optional, 512-bit registers: struct Duo (both blocks of a two-block tile in one
//     // register: T, join, join_load, zero, fma, add, clamp, store2) and kDuoStrip (pixels per
//     // tile); two-block tiles then run for rows of any width
//   };
//
// Why blocked: with 8 channels in a vector every tap is one full-vector load at a constant
// offset, whatever the plane width or stride; no row copies, shuffles or transposes (the NCHW
// kernels need all three), and stride 2 is just a longer step between pixels.
//
// Per output row: tiles of kStrip pixels (weights loaded once per tap per tile, one FMA chain
// per pixel), then 8, 4, 2, 1.  Columns whose taps all lie inside the row (the interior) use
// plain loads; border columns (left and right padding) the same tiles with out-of-row taps
// reading a block of zeros.  Kernel rows above or below the plane are skipped for the whole
// row, so no input outside the nblk*H*W*8 floats is ever read and no padded copy is made.
// Narrow rows (7x7, 14x14 planes) put two or four blocks in one tile (run / run_blocks), and
// tiles of 1-2 pixels split their taps over 2-4 chains, so the FMA latency stays hidden.
//
// Everything has internal linkage: each ISA file compiles its own copy with its own flags
// (isa_parts.h; kernels.h's rules).
#pragma once

#include <cstddef>
#include <type_traits>

#include "kernels/kernels.h"

namespace sk {
namespace {

// Zeros a border tap reads instead of input outside the row (one block).
alignas(64) const float kDwZeros[kChannelBlock] = {};
// Output rows up to this wide run four blocks per tile (V::kPairMaxWidth: two).
constexpr int kQuadMaxWidth = 8;

template <class V, class = void>
struct HasDuo : std::false_type {};
template <class V>
struct HasDuo<V, std::void_t<typename V::Duo>> : std::true_type {};

template <class V>
struct DwBlocked {
  using T = typename V::T;
  static constexpr int kB = kChannelBlock;
  static constexpr bool kDuo = HasDuo<V>::value;

  // What a tile needs of each of its NB blocks (NB = 1, or 2 / 4 for narrow planes).
  template <int NB>
  struct Blocks {
    const float* r[NB];  // the first in-range input row of the output row (column 0)
    const float* w[NB];  // tap (ky0, 0)'s weights
    float* y[NB];        // the output row
    T bias[NB];
  };

  // A tile of P consecutive output pixels of one output row, in NB blocks at once.  nky kernel
  // rows from ky0 are in the plane; ix0: input column of tap 0 of the tile's first pixel; ox:
  // its output column.  EDGE: some taps fall left or right of the row (border columns); those
  // read kDwZeros instead (a pointer select, no branch), so border pixels run in tiles like the
  // interior instead of one pixel at a time.
  template <int K, int S, int P, bool EDGE, int NB>
  static inline __attribute__((always_inline)) void tile(const Blocks<NB>& bl, ptrdiff_t row,
                                                         int nky, int k, int s, int ix0, int W,
                                                         T vlo, T vhi, int ox) {
    const int kk = K ? K : k;
    const int ss = S ? S : s;
    // Small tiles (the last pixels of a row) get NA chains per register, taken in turn by kx,
    // so the FMA latency does not serialise them (7x7 planes are mostly such tiles).
    constexpr int NA = (NB * P >= 4 || K == 0) ? 1 : (NB * P == 1 ? 4 : 2);
    T acc[NB][P][NA];
    const float* r[NB];
    const float* w[NB];
    _Pragma("GCC unroll 4") for (int b = 0; b < NB; ++b) {
      // Non-edge tiles address every tap as a constant offset from one pointer that moves by
      // a row per kernel row (else GCC keeps the offsets in registers and spills them).
      r[b] = EDGE ? bl.r[b] : bl.r[b] + static_cast<ptrdiff_t>(ix0) * kB;
      w[b] = bl.w[b];
      _Pragma("GCC unroll 16") for (int p = 0; p < P; ++p) {
        acc[b][p][0] = bl.bias[b];
        _Pragma("GCC unroll 4") for (int a = 1; a < NA; ++a) acc[b][p][a] = V::set1(0.0f);
      }
    }
    for (int j = 0; j < nky; ++j) {
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; ++kx) {
        _Pragma("GCC unroll 4") for (int b = 0; b < NB; ++b) {
          const T wv = V::wload(w[b] + kx * kB);
          _Pragma("GCC unroll 16") for (int p = 0; p < P; ++p) {
            const float* q;
            if (EDGE) {
              const int col = ix0 + p * ss + kx;
              q = static_cast<unsigned>(col) < static_cast<unsigned>(W)
                      ? r[b] + static_cast<ptrdiff_t>(col) * kB
                      : kDwZeros;
            } else {
              q = r[b] + (p * ss + kx) * kB;
            }
            acc[b][p][kx % NA] = V::fma(wv, V::load(q), acc[b][p][kx % NA]);
          }
        }
      }
      _Pragma("GCC unroll 4") for (int b = 0; b < NB; ++b) {
        r[b] += row;
        w[b] += kk * kB;
      }
    }
    _Pragma("GCC unroll 4") for (int b = 0; b < NB; ++b) {
      _Pragma("GCC unroll 16") for (int p = 0; p < P; ++p) {
        _Pragma("GCC unroll 4") for (int a = 1; a < NA; ++a)
          acc[b][p][0] = V::add(acc[b][p][0], acc[b][p][a]);
        V::store(bl.y[b] + (ox + p) * kB, V::clamp(acc[b][p][0], vlo, vhi));
      }
    }
  }

  // tile<..., NB = 2> on a policy with 512-bit registers (V::Duo): a pixel's two blocks in one
  // register (block 0 low, block 1 high), so the same taps and sums take half the multiply-add
  // instructions.  Each input is two 32-byte loads joined (no load splits a cache line; a zmm
  // holding two pixels of one block needed line-splitting loads or in-register shifts and ran
  // no faster than ymm tiles).
  template <int K, int S, int P, bool EDGE>
  static inline __attribute__((always_inline)) void tile_duo(const Blocks<2>& bl, ptrdiff_t row,
                                                             int nky, int k, int s, int ix0,
                                                             int W, T vlo, T vhi, int ox) {
    using D = typename V::Duo;
    using R = typename D::T;
    const int kk = K ? K : k;
    const int ss = S ? S : s;
    constexpr int NA = (P >= 4 || K == 0) ? 1 : (P == 1 ? 4 : 2);
    R acc[P][NA];
    const float* r0 = EDGE ? bl.r[0] : bl.r[0] + static_cast<ptrdiff_t>(ix0) * kB;
    const float* r1 = EDGE ? bl.r[1] : bl.r[1] + static_cast<ptrdiff_t>(ix0) * kB;
    const float* w0 = bl.w[0];
    const float* w1 = bl.w[1];
    const R bias = D::join(bl.bias[0], bl.bias[1]);
    _Pragma("GCC unroll 16") for (int p = 0; p < P; ++p) {
      acc[p][0] = bias;
      _Pragma("GCC unroll 4") for (int a = 1; a < NA; ++a) acc[p][a] = D::zero();
    }
    for (int j = 0; j < nky; ++j) {
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; ++kx) {
        const R wv = D::join_load(w0 + kx * kB, w1 + kx * kB);
        _Pragma("GCC unroll 16") for (int p = 0; p < P; ++p) {
          const float* q0;
          const float* q1;
          if (EDGE) {
            const int col = ix0 + p * ss + kx;
            const bool in = static_cast<unsigned>(col) < static_cast<unsigned>(W);
            q0 = in ? r0 + static_cast<ptrdiff_t>(col) * kB : kDwZeros;
            q1 = in ? r1 + static_cast<ptrdiff_t>(col) * kB : kDwZeros;
          } else {
            q0 = r0 + (p * ss + kx) * kB;
            q1 = r1 + (p * ss + kx) * kB;
          }
          acc[p][kx % NA] = D::fma(wv, D::join_load(q0, q1), acc[p][kx % NA]);
        }
      }
      r0 += row;
      r1 += row;
      w0 += kk * kB;
      w1 += kk * kB;
    }
    const R lo = D::join(vlo, vlo), hi = D::join(vhi, vhi);
    _Pragma("GCC unroll 16") for (int p = 0; p < P; ++p) {
      _Pragma("GCC unroll 4") for (int a = 1; a < NA; ++a) acc[p][0] = D::add(acc[p][0], acc[p][a]);
      D::store2(bl.y[0] + (ox + p) * kB, bl.y[1] + (ox + p) * kB, D::clamp(acc[p][0], lo, hi));
    }
  }

  // One tile of P pixels in NB blocks, on the policy's widest registers.
  template <int K, int S, int P, bool EDGE, int NB>
  static inline __attribute__((always_inline)) void tile_any(const Blocks<NB>& bl, ptrdiff_t row,
                                                             int nky, int k, int s, int ix0,
                                                             int W, T vlo, T vhi, int ox) {
    if constexpr (NB == 2 && kDuo)
      tile_duo<K, S, P, EDGE>(bl, row, nky, k, s, ix0, W, vlo, vhi, ox);
    else
      tile<K, S, P, EDGE, NB>(bl, row, nky, k, s, ix0, W, vlo, vhi, ox);
  }

  template <int NB>
  static constexpr int strip() {
    if constexpr (NB == 2 && kDuo)
      return V::kDuoStrip;
    else
      return V::kStrip / NB;
  }

  // Output pixels [ox, ox_end) of one row: tiles of strip<NB>() pixels, then 8, 4, 2, 1.
  template <int K, int S, bool EDGE, int NB>
  static inline void span(const Blocks<NB>& bl, ptrdiff_t row, int nky, int k, int s,
                          int pad_l, int W, T vlo, T vhi, int ox, int ox_end) {
    const int ss = S ? S : s;
    constexpr int P = strip<NB>();
    static_assert(P >= 1 && P <= 16, "kStrip / NB must be 1..16");
    for (; ox + P <= ox_end; ox += P)
      tile_any<K, S, P, EDGE, NB>(bl, row, nky, k, s, ox * ss - pad_l, W, vlo, vhi, ox);
    if (P > 8 && ox + 8 <= ox_end) {
      tile_any<K, S, (P > 8 ? 8 : 1), EDGE, NB>(bl, row, nky, k, s, ox * ss - pad_l, W, vlo, vhi,
                                            ox);
      ox += 8;
    }
    if (P > 4 && ox + 4 <= ox_end) {
      tile_any<K, S, (P > 4 ? 4 : 1), EDGE, NB>(bl, row, nky, k, s, ox * ss - pad_l, W, vlo, vhi,
                                            ox);
      ox += 4;
    }
    if (P > 2 && ox + 2 <= ox_end) {
      tile_any<K, S, (P > 2 ? 2 : 1), EDGE, NB>(bl, row, nky, k, s, ox * ss - pad_l, W, vlo, vhi,
                                            ox);
      ox += 2;
    }
    if (ox < ox_end)
      tile_any<K, S, 1, EDGE, NB>(bl, row, nky, k, s, ox * ss - pad_l, W, vlo, vhi, ox);
  }

  // Output row oy of NB blocks (block b's input xb[b], weights wb[b], output yb[b]).
  template <int K, int S, int NB>
  static void out_row(const DwShape& sh, const float* const* xb, const float* const* wb,
                      const T* vb, T vlo, T vhi, float* const* yb, int oy) {
    const int k = K ? K : sh.k, s = S ? S : sh.stride;
    const int H = sh.H, W = sh.W, OW = sh.OW;
    const ptrdiff_t row = static_cast<ptrdiff_t>(W) * kB;
    const int iy0 = oy * s - sh.pad_t;  // input row of kernel row 0
    const int ky0 = iy0 < 0 ? -iy0 : 0;
    const int ky1 = H - iy0 < k ? H - iy0 : k;
    Blocks<NB> bl;
    for (int b = 0; b < NB; ++b) {
      bl.y[b] = yb[b] + static_cast<ptrdiff_t>(oy) * OW * kB;
      bl.bias[b] = vb[b];
      if (ky1 <= ky0) {  // every tap in the padding: bias alone
        for (int ox = 0; ox < OW; ++ox)
          V::store(bl.y[b] + ox * kB, V::clamp(vb[b], vlo, vhi));
      } else {
        bl.r[b] = xb[b] + static_cast<ptrdiff_t>(iy0 + ky0) * row;
        bl.w[b] = wb[b] + ky0 * k * kB;
      }
    }
    if (ky1 <= ky0) return;
    const int nky = ky1 - ky0;
    // Interior columns: ix = ox*s - pad_l >= 0 and ix + k <= W.
    int ox_lo = (sh.pad_l + s - 1) / s;
    int ox_hi = W - k + sh.pad_l >= 0 ? (W - k + sh.pad_l) / s + 1 : 0;
    if (ox_lo > OW) ox_lo = OW;
    if (ox_hi > OW) ox_hi = OW;
    if (ox_hi < ox_lo) ox_hi = ox_lo;
    span<K, S, true, NB>(bl, row, nky, k, s, sh.pad_l, W, vlo, vhi, 0, ox_lo);
    span<K, S, false, NB>(bl, row, nky, k, s, sh.pad_l, W, vlo, vhi, ox_lo, ox_hi);
    span<K, S, true, NB>(bl, row, nky, k, s, sh.pad_l, W, vlo, vhi, ox_hi, OW);
  }

  template <int K, int S>
  static void run(const DwShape& sh, int nblk, const float* x, const float* w,
                  const float* bias, float lo, float hi, float* y, int oy_begin, int oy_end) {
    const T vlo = V::set1(lo), vhi = V::set1(hi);
    int b = 0;
    // Narrow output rows: two or four blocks per tile, so the few pixels of a row still give
    // enough independent FMA chains and each tile's fixed cost is shared by the blocks.  Four
    // need 32 registers: with AVX2's 16 they spilled (1152x7x7 5x5: 0.057 ms with four, as
    // with two; AVX-512's ymm tiles 0.056 -> 0.045).
    if (V::kStrip >= 12 && sh.OW <= kQuadMaxWidth)
      b = run_blocks<K, S, 4>(sh, nblk, b, x, w, bias, vlo, vhi, y, oy_begin, oy_end);
    bool two;  // two-block tiles: with Duo at every width (one zmm per pixel), else narrow rows
    if constexpr (kDuo)
      two = true;
    else
      two = sh.OW <= V::kPairMaxWidth;
    if (two) b = run_blocks<K, S, 2>(sh, nblk, b, x, w, bias, vlo, vhi, y, oy_begin, oy_end);
    run_blocks<K, S, 1>(sh, nblk, b, x, w, bias, vlo, vhi, y, oy_begin, oy_end);
  }

  // Blocks [b, ...) NB at a time while NB are left; returns the first block not done.
  template <int K, int S, int NB>
  static int run_blocks(const DwShape& sh, int nblk, int b, const float* x, const float* w,
                        const float* bias, T vlo, T vhi, float* y, int oy_begin, int oy_end) {
    const ptrdiff_t in = static_cast<ptrdiff_t>(sh.H) * sh.W * kB;
    const ptrdiff_t out = static_cast<ptrdiff_t>(sh.OH) * sh.OW * kB;
    const ptrdiff_t wk = static_cast<ptrdiff_t>(sh.k) * sh.k * kB;
    for (; b + NB <= nblk; b += NB) {
      const float* xs[NB];
      const float* ws[NB];
      float* ys[NB];
      T vb[NB];
      for (int i = 0; i < NB; ++i) {
        xs[i] = x + (b + i) * in;
        ws[i] = w + (b + i) * wk;
        ys[i] = y + (b + i) * out;
        vb[i] = V::wload(bias + (b + i) * kB);
      }
      for (int oy = oy_begin; oy < oy_end; ++oy)
        out_row<K, S, NB>(sh, xs, ws, vb, vlo, vhi, ys, oy);
    }
    return b;
  }

  // Taps unrolled for the common kernels (3x3, 5x5; stride 1 or 2); anything else runs the
  // same code with run-time k and stride.
  static void conv(const DwShape& sh, int nblk, const float* x, const float* w,
                   const float* bias, float lo, float hi, float* y, int oy_begin, int oy_end) {
    if (oy_begin < 0) oy_begin = 0;
    if (oy_end > sh.OH) oy_end = sh.OH;
    if (nblk <= 0 || oy_begin >= oy_end || sh.OW <= 0) return;
    const int k = sh.k, s = sh.stride;
    if (k == 3 && s == 1) return run<3, 1>(sh, nblk, x, w, bias, lo, hi, y, oy_begin, oy_end);
    if (k == 3 && s == 2) return run<3, 2>(sh, nblk, x, w, bias, lo, hi, y, oy_begin, oy_end);
    if (k == 5 && s == 1) return run<5, 1>(sh, nblk, x, w, bias, lo, hi, y, oy_begin, oy_end);
    if (k == 5 && s == 2) return run<5, 2>(sh, nblk, x, w, bias, lo, hi, y, oy_begin, oy_end);
    if (s == 1) return run<0, 1>(sh, nblk, x, w, bias, lo, hi, y, oy_begin, oy_end);
    if (s == 2) return run<0, 2>(sh, nblk, x, w, bias, lo, hi, y, oy_begin, oy_end);
    run<0, 0>(sh, nblk, x, w, bias, lo, hi, y, oy_begin, oy_end);
  }
};

}  // namespace
}  // namespace sk
