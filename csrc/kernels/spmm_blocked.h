// 1x4 block-sparse SpMM on channel blocks (NCHWc8 in and out; kernels.h SpmmBlockedFn), one
// template for the SIMD ISAs over a vector policy V (as dwconv_blocked.h):
//
//   struct V {
//     using T;                        // 8 floats: one reduction row over 8 pixels
//     using H;                        // 4 floats: one pixel's 4 rows of a group
//     static constexpr int kMaxNV;    // pixel vectors per register tile (4 x kMaxNV accumulators)
//     static T load(const float* p); static void store(float* p, T v);
//     static T zero(); static T set1(float f); static T fma(T a, T b, T c);  // a * b + c
//     static T clamp(T v, T lo, T hi);            // min(hi, max(lo, v)), a NaN stays NaN
//     static T add(T a, T b);
//     static void transpose8(T (&r)[8]);          // r[i] lane j <- r[j] lane i
//     static void rows_to_pixels(const T (&r)[4], H (&px)[8]);  // px[i] = (r0[i] .. r3[i])
//     static void rows_to_pairs(const T (&r)[4], T (&u)[4]);    // u[i] = (px[i] | px[i+4])
//     static T line_lo(T ua, T ub); static T line_hi(T ua, T ub);  // (ua | ub) low / high halves
//     static H hload(const float* p); static void hstore(float* p, H v);
//     static H hadd(H a, H b); static H hclamp(H v, H lo, H hi); static H hset1(float f);
//     // optional: a wider register type to accumulate in (two T each), and with 32 registers
//     // the whole-line shuffles: kLines, rows_to_lines / lines_to_rows on 8 Wide registers
//     using Wide; static T low(Wide::T); static T high(Wide::T);
//   };
//
// Why this shape: the 1x4 tile vectorises over pixels (4 rows x 8*NV pixels, 4 broadcasts and
// NV loads per 4*NV FMAs, as spmm_24x4_avx2), but in NCHWc8 a reduction row's pixels are 8
// floats apart.  So X is read through a panel: up to panel_stride pixels of every X block are
// transposed (8x8 in registers) into [K8][panel_stride] rows once, and every output group then
// sweeps that panel.  The output is NOT written to a panel and transposed back (round 6 measured
// that design 1.1-1.9x slower than NCHW): each 4-row x 8-pixel piece of the tile is transposed
// in registers into pixel halves.  Groups 2b and 2b+1 (the two halves of Y block b) run as a
// pair over the same pixels: the first group's halves wait in a small L1 stash (both tiles
// live at once would be 24 accumulators, more than AVX2's 16 registers) and each pixel's
// 8-channel line is stored once, whole; AVX-512's 32 registers do hold both (tile_lines), and
// 8 rows x 16 pixels become whole lines in one shuffle network.  A group without its partner
// (a range that starts or ends inside a block) stores 4-lane halves.
//
// Everything has internal linkage: each ISA file compiles its own copy with its own flags.
#pragma once

#include <cstddef>
#include <type_traits>

#include "kernels/group_sum4.h"
#include "kernels/kernels.h"

namespace sk {
namespace {

template <class V>
struct SpmmBlocked {
  using T = typename V::T;
  using H = typename V::H;
  static constexpr int kL = kChannelBlock;

  // Panel columns [0, w) of every X block, from pixel p0: panel[k*ps + q] = X(k, p0 + q);
  // columns up to w rounded to 8 hold zeros past w (the tiles' last vector reads them).
  static void fill_panel(const float* x, ptrdiff_t xbs, int xblocks, size_t p0, size_t w,
                         float* panel, int ps) {
    for (int kb = 0; kb < xblocks; ++kb) {
      const float* xb = x + kb * xbs + static_cast<ptrdiff_t>(p0) * kL;
      float* pb = panel + static_cast<ptrdiff_t>(kb) * kL * ps;
      size_t q = 0;
      if constexpr (HasLines<V>::value) {  // 16 pixels at a time in wide registers
        using P = typename V::Wide;
        for (; q + 16 <= w; q += 16) {
          typename P::T r[8];
          _Pragma("GCC unroll 8") for (int i = 0; i < 8; ++i) r[i] = P::load(xb + (q + 2 * i) * kL);
          V::lines_to_rows(r);
          _Pragma("GCC unroll 8") for (int l = 0; l < 8; ++l) P::store(pb + l * ps + q, r[l]);
        }
      }
      for (; q < w; q += 8) {
        T r[8];
        if (q + 8 <= w) {
          _Pragma("GCC unroll 8") for (int i = 0; i < 8; ++i) r[i] = V::load(xb + (q + i) * kL);
        } else {
          for (int i = 0; i < 8; ++i) r[i] = q + i < w ? V::load(xb + (q + i) * kL) : V::zero();
        }
        V::transpose8(r);
        _Pragma("GCC unroll 8") for (int l = 0; l < 8; ++l) V::store(pb + l * ps + q, r[l]);
      }
    }
  }

  // A group's 4 rows x NA vectors of policy P (P::T) from panel column p (pan = panel + p),
  // bias included.
  template <class P, int NA>
  static inline __attribute__((always_inline)) void accumulate_in(
      const float* pan, const int32_t* off, const float* val, int32_t j0, int32_t j1,
      const float* bias4, typename P::T (&acc)[4][NA]) {
    using A = typename P::T;
    constexpr int kStep = P::kLanes;
    _Pragma("GCC unroll 4") for (int b = 0; b < 4; ++b) {
      const A init = bias4 ? P::set1(bias4[b]) : P::zero();
      _Pragma("GCC unroll 8") for (int v = 0; v < NA; ++v) acc[b][v] = init;
    }
    for (int32_t j = j0; j < j1; ++j) {
      const float* xr = pan + off[j];
      A xv[NA];
      _Pragma("GCC unroll 8") for (int v = 0; v < NA; ++v) xv[v] = P::load(xr + kStep * v);
      const float* wj = val + 4 * static_cast<ptrdiff_t>(j);
      _Pragma("GCC unroll 4") for (int b = 0; b < 4; ++b) {
        const A wb = P::set1(wj[b]);
        _Pragma("GCC unroll 8") for (int v = 0; v < NA; ++v) acc[b][v] = P::fma(wb, xv[v], acc[b][v]);
      }
    }
  }

  // A policy may accumulate in wider registers (V::Wide, two T per register: AVX-512's zmm
  // while the channel blocks stay 8 floats) and split them for the epilogue.
  template <class P, class = void>
  struct HasWide : std::false_type {};
  template <class P>
  struct HasWide<P, std::void_t<typename P::Wide>> : std::true_type {};

  // A policy with 32 registers (AVX-512: V::Wide, V::kLines, V::rows_to_lines) keeps both groups'
  // tiles live, 8 rows x NW*16 pixels, and turns each 8 x 16 piece into whole lines in
  // registers: no stash, half the shuffles of the pixel-pair route.
  template <class P, class = void>
  struct HasLines : std::false_type {};
  template <class P>
  struct HasLines<P, std::void_t<decltype(P::kLines)>> : std::true_type {};

  // A group's 4 rows x NV*8 pixels, as T vectors.
  template <int NV>
  static inline __attribute__((always_inline)) void accumulate(const float* pan,
                                                               const int32_t* off,
                                                               const float* val, int32_t j0,
                                                               int32_t j1, const float* bias4,
                                                               T (&acc)[4][NV]) {
    if constexpr (HasWide<V>::value && NV % 2 == 0) {
      using W = typename V::Wide;
      typename W::T wide[4][NV / 2];
      accumulate_in<W, NV / 2>(pan, off, val, j0, j1, bias4, wide);
      _Pragma("GCC unroll 4") for (int b = 0; b < 4; ++b) {
        _Pragma("GCC unroll 8") for (int v = 0; v < NV / 2; ++v) {
          acc[b][2 * v] = V::low(wide[b][v]);
          acc[b][2 * v + 1] = V::high(wide[b][v]);
        }
      }
    } else {
      accumulate_in<V, NV>(pan, off, val, j0, j1, bias4, acc);
    }
  }

  // One register tile of one group: 4 rows x NV*8 pixels stored as 4-lane pixel halves; y /
  // res point at the tile's first pixel's half block.  PART: the last vector has `valid`
  // pixels.
  template <int NV, bool PART>
  static inline __attribute__((always_inline)) void tile(const float* pan, const int32_t* off,
                                                         const float* val, int32_t j0,
                                                         int32_t j1, const float* bias4,
                                                         float* y, const float* res,
                                                         bool after, T vlo, T vhi, H hlo, H hhi,
                                                         int valid) {
    T acc[4][NV];
    accumulate<NV>(pan, off, val, j0, j1, bias4, acc);
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
      const T r[4] = {acc[0][v], acc[1][v], acc[2][v], acc[3][v]};
      const int nv = (PART && v == NV - 1) ? valid : 8;
      float* yv = y + 8 * v * kL;
      // Constant indices only (i < nv as a guard), so px stays in registers.
      if (!res) {  // the clamp on 4 row vectors, before the transpose (8 pixel halves after)
        const T c[4] = {V::clamp(r[0], vlo, vhi), V::clamp(r[1], vlo, vhi),
                        V::clamp(r[2], vlo, vhi), V::clamp(r[3], vlo, vhi)};
        H px[8];
        V::rows_to_pixels(c, px);
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; ++i) {
          if (PART && i >= nv) break;
          V::hstore(yv + i * kL, px[i]);
        }
      } else {  // the residual is blocked like Y: add it per pixel after the transpose
        H px[8];
        V::rows_to_pixels(r, px);
        const float* rv = res + 8 * v * kL;
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; ++i) {
          if (PART && i >= nv) break;
          const H rr = V::hload(rv + i * kL);
          H q = px[i];
          if (!after) q = V::hadd(q, rr);
          q = V::hclamp(q, hlo, hhi);
          if (after) q = V::hadd(q, rr);
          V::hstore(yv + i * kL, q);
        }
      }
    }
  }

  // What one group's tiles need, at panel chunk pc.
  struct Group {
    int32_t j0, j1;
    const float* bias4;
    float* y;
    const float* res;
  };
  static Group group(const SpMat& w, int g, const Epilogue& ep, float* y, ptrdiff_t ybs,
                     size_t pc) {
    const bool has = g < w.groups;
    const ptrdiff_t at = static_cast<ptrdiff_t>(pc) * kL + (g % 2) * 4;
    return Group{has ? w.group_ptr[g] : 0, has ? w.group_ptr[g + 1] : 0,
                 ep.bias ? ep.bias + 4 * g : nullptr, y + (g / 2) * ybs + at,
                 ep.residual ? ep.residual + (g / 2) * ep.residual_stride + at : nullptr};
  }

  template <int NW>
  static inline __attribute__((always_inline)) void tile_lines(const float* panel,
                                                               const SpMat& w, const Group& a,
                                                               const Group& b, size_t p,
                                                               const Epilogue& ep) {
    using P = typename V::Wide;
    using W = typename P::T;
    W ta[4][NW], tb[4][NW];
    accumulate_in<P, NW>(panel + p, w.x_offset, w.values, a.j0, a.j1, a.bias4, ta);
    accumulate_in<P, NW>(panel + p, w.x_offset, w.values, b.j0, b.j1, b.bias4, tb);
    const W lo = P::set1(ep.lo), hi = P::set1(ep.hi);
    const bool after = ep.residual_after_act;
    _Pragma("GCC unroll 4") for (int v = 0; v < NW; ++v) {
      W r[8] = {ta[0][v], ta[1][v], ta[2][v], ta[3][v], tb[0][v], tb[1][v], tb[2][v], tb[3][v]};
      float* yv = a.y + (p + 16 * v) * kL;
      if (!a.res) {  // the clamp commutes with the transpose: on 8 rows, before it
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; ++k) r[k] = P::clamp(r[k], lo, hi);
        V::rows_to_lines(r);
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; ++k) P::store(yv + 2 * k * kL, r[k]);
      } else {
        V::rows_to_lines(r);
        const float* rv = a.res + (p + 16 * v) * kL;
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; ++k) {
          W q = r[k];
          if (!after) q = P::add(q, P::load(rv + 2 * k * kL));
          q = P::clamp(q, lo, hi);
          if (after) q = P::add(q, P::load(rv + 2 * k * kL));
          P::store(yv + 2 * k * kL, q);
        }
      }
    }
  }

  // Both groups of a Y block (a = 2b, b = 2b+1) over the same NV*8 pixels from pixel p,
  // stored as full 8-channel lines: a's tile waits in pixel pairs in `stash` (L1) while b's
  // is computed, then each pixel's line is joined from both halves and stored once.  Half the
  // stores of two tile() calls and no 128-bit extracts, which is what the small-K layers
  // (few FMAs per output) spend their time on.
  template <int NV, bool PART>
  static inline __attribute__((always_inline)) void tile_pair(const float* panel,
                                                              const SpMat& w, const Group& a,
                                                              const Group& b, size_t p,
                                                              const Epilogue& ep, int valid) {
    if constexpr (HasLines<V>::value && NV % 2 == 0) {
      tile_lines<NV / 2>(panel, w, a, b, p, ep);
      return;
    }
    const bool after = ep.residual_after_act;
    const T vlo = V::set1(ep.lo), vhi = V::set1(ep.hi);
    alignas(64) float stash[NV * 4 * kL];
    T acc[4][NV];
    accumulate<NV>(panel + p, w.x_offset, w.values, a.j0, a.j1, a.bias4, acc);
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
      const T r[4] = {acc[0][v], acc[1][v], acc[2][v], acc[3][v]};
      T u[4];
      V::rows_to_pairs(r, u);
      _Pragma("GCC unroll 4") for (int k = 0; k < 4; ++k) V::store(stash + (4 * v + k) * kL, u[k]);
    }
    accumulate<NV>(panel + p, w.x_offset, w.values, b.j0, b.j1, b.bias4, acc);
    _Pragma("GCC unroll 8") for (int v = 0; v < NV; ++v) {
      const T r[4] = {acc[0][v], acc[1][v], acc[2][v], acc[3][v]};
      T u[4];
      V::rows_to_pairs(r, u);
      const int nv = (PART && v == NV - 1) ? valid : 8;
      float* yv = a.y + (p + 8 * v) * kL;
      const float* rv = a.res ? a.res + (p + 8 * v) * kL : nullptr;
      _Pragma("GCC unroll 8") for (int i = 0; i < 8; ++i) {
        if (PART && i >= nv) break;
        const T ua = V::load(stash + (4 * v + i % 4) * kL);
        T q = i < 4 ? V::line_lo(ua, u[i % 4]) : V::line_hi(ua, u[i % 4]);
        if (rv && !after) q = V::add(q, V::load(rv + i * kL));
        q = V::clamp(q, vlo, vhi);
        if (rv && after) q = V::add(q, V::load(rv + i * kL));
        V::store(yv + i * kL, q);
      }
    }
  }

  // One pixel q of groups a and b (b null: a alone, 4 lanes) from the panel, one multiply-add
  // per block (group_sum4.h); for the last pixels of a chunk, where a vector tile would be
  // mostly empty lanes.
  static void one_pixel(const float* panel, const SpMat& w, const Group& a, const Group* b,
                        size_t q, const Epilogue& ep) {
    const auto sum = [&](const Group& g) {
      F4 acc = group_sum4(w.values, w.x_offset, g.j0, g.j1, panel + q);
      if (g.bias4) acc += load_f4(g.bias4);
      return acc;
    };
    float line[8];
    const int lanes = b ? 8 : 4;
    const F4 sa = sum(a);
    __builtin_memcpy(line, &sa, sizeof sa);
    if (b) {
      const F4 sb = sum(*b);
      __builtin_memcpy(line + 4, &sb, sizeof sb);
    }
    const float* res = a.res ? a.res + q * kL : nullptr;
    for (int l = 0; l < lanes; ++l) {
      float v = line[l];
      const float r = res ? res[l] : 0.0f;
      if (!ep.residual_after_act) v += r;
      v = v < ep.lo ? ep.lo : v;  // a NaN stays NaN
      v = v > ep.hi ? ep.hi : v;
      if (ep.residual_after_act) v += r;
      a.y[q * kL + l] = v;
    }
  }

  // Up to this many pixels after the last 8-pixel vector go through one_pixel: a 7x7 plane is
  // 48 + 1 pixels, and that one pixel cost as much as 16 (a whole 8-pixel tile per group pair).
  static constexpr size_t kOnePixelTail = 3;

  // The tiles narrower than kMaxNV vectors, widest first: after the full tiles fewer than
  // kMaxNV vectors remain, so each width runs at most once.  f(integral_constant<NV>, p).
  template <int NV, class F>
  static inline __attribute__((always_inline)) void rest(size_t& p, size_t cw, F&& f) {
    if constexpr (NV >= 1) {
      if (p + 8 * NV <= cw) {
        f(std::integral_constant<int, NV>{}, p);
        p += 8 * NV;
      }
      rest<NV - 1>(p, cw, f);
    }
  }

  // Groups [g_begin, g_end) over panel columns [0, cw), which are pixels pc .. pc+cw of Y
  // (and of the residual); the panel's rows hold zeros (or any finite value) up to cw
  // rounded to 8.
  static void sweep(size_t cw, const SpMat& w, int g_begin, int g_end, const float* panel,
                    float* y, ptrdiff_t ybs, const Epilogue& ep, size_t pc) {
    constexpr int NVM = V::kMaxNV;
    const T vlo = V::set1(ep.lo), vhi = V::set1(ep.hi);  // the lone groups' bounds
    const H hlo = V::hset1(ep.lo), hhi = V::hset1(ep.hi);
    const bool after = ep.residual_after_act;
    for (int g = g_begin; g < g_end;) {
      const Group a = group(w, g, ep, y, ybs, pc);
      size_t p = 0;
      if (g % 2 == 0 && g + 1 < g_end) {  // both halves of Y block g/2: full lines
        const Group b = group(w, g + 1, ep, y, ybs, pc);
        for (; p + 8 * NVM <= cw; p += 8 * NVM) tile_pair<NVM, false>(panel, w, a, b, p, ep, 8);
        rest<NVM - 1>(p, cw, [&](auto nv, size_t at) {
          tile_pair<decltype(nv)::value, false>(panel, w, a, b, at, ep, 8);
        });
        if (cw - p > kOnePixelTail)
          tile_pair<1, true>(panel, w, a, b, p, ep, static_cast<int>(cw - p));
        else
          for (; p < cw; ++p) one_pixel(panel, w, a, &b, p, ep);
        g += 2;
        continue;
      }
      // A lone group (the range starts or ends inside a block): 4-lane halves.
      auto one = [&](auto nv, size_t at, int valid) {
        constexpr int NV = decltype(nv)::value;
        tile<NV, (NV == 1)>(panel + at, w.x_offset, w.values, a.j0, a.j1, a.bias4,
                            a.y + at * kL, a.res ? a.res + at * kL : a.res, after, vlo, vhi,
                            hlo, hhi, valid);
      };
      for (; p + 8 * NVM <= cw; p += 8 * NVM) one(std::integral_constant<int, NVM>{}, p, 8);
      rest<NVM - 1>(p, cw, [&](auto nv, size_t at) { one(nv, at, 8); });
      if (cw - p > kOnePixelTail)
        one(std::integral_constant<int, 1>{}, p, static_cast<int>(cw - p));
      else
        for (; p < cw; ++p) one_pixel(panel, w, a, nullptr, p, ep);
      g += 1;
    }
  }

  static void run(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                  ptrdiff_t xbs, int xblocks, float* y, ptrdiff_t ybs, const Epilogue& ep,
                  float* panel, int ps) {
    // Panel chunks of equal width (a multiple of 8, at most ps): 49 pixels with ps = 48 run as
    // one 56-wide chunk, not 48 + 1 (every chunk is one more pass over all the weights).
    const size_t nch = (n + ps - 1) / ps;
    const size_t cwid = ((n + nch - 1) / nch + 7) / 8 * 8;
    for (size_t pc = 0; pc < n; pc += cwid) {
      const size_t cw = n - pc < cwid ? n - pc : cwid;
      fill_panel(x, xbs, xblocks, pc, cw, panel, ps);
      sweep(cw, w, g_begin, g_end, panel, y, ybs, ep, pc);
    }
  }
};

}  // namespace
}  // namespace sk
