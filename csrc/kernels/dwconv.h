// Depthwise convolution of NCHW channel planes (kernels.h DwConvFn / DwMultiFn), one template
// for the SIMD ISAs over a vector policy V (as dwconv_blocked.h and spmm_blocked.h):
//
//   struct V {
//     using T;                      // kLanes floats: kLanes output columns
//     using Wt;                     // a tap's weight as fma takes it (a broadcast T, or a float)
//     using Pair;                   // 2*kLanes consecutive inputs, for the stride-2 split
//     static constexpr int kLanes;
//     static constexpr bool kShortRing;        // ring of max(k + stride + 4, 8) rows, not all
//     static constexpr bool kWholeTailStores;  // OW < kLanes: whole stores while they fit
//     static constexpr bool kMulti;            // dwconv_multi vectorises over channels
//     static T load(const float* p); static void store(float* p, T v);
//     static T load_part(const float* p, int m);     // lanes [0, m) <- p[0 .. m), the rest 0
//     static T load_shifted(const float* p, int sh, int m);  // lanes [sh, sh+m) <- p[0 .. m)
//     static void store_part(float* p, T v, int m);  // lanes [0, m) only
//     static T zero(); static T set1(float f); static T add(T a, T b);
//     static Wt weight(const float* p);              // tap *p
//     static T fma(Wt w, T v, T acc);                // w * v + acc
//     static T clamp(T v, T lo, T hi);               // min(hi, max(lo, v)), a NaN stays NaN
//     static Pair load2(const float* row, int i);    // row[i .. i + 2*kLanes) (*)
//     static Pair pair(T lo, T hi);                  // the same from two vectors
//     static T even(const Pair& p); static T odd(const Pair& p);  // columns 0 2 4 .. / 1 3 5 ..
//     static T s2_order(T v);  // even/odd may leave the columns permuted (the same for both):
//                              // put an output vector built from them back in column order
//     // kMulti only (with Wt = T):
//     static T gather(const float* p, int stride, int m);  // lane c <- p[c*stride], c < m; else 0
//     struct Transpose { void operator()(T (&r)[kLanes]) const; };  // r[i][j] <- r[j][i]
//   };
// (*) row and index rather than row + i: GCC then folds the chunk's tap offsets into the
// loads' addresses (the stride-2 pair loop ran 9 instructions longer per chunk otherwise).
//
// One plane (plane): a vector of kLanes output columns at a time, two output rows per pass
// (each input row loaded once for both; two independent sets of FMA chains, which small planes,
// bound by latency, need).  Taps are unrolled and the weights set up once per plane for k = 3
// and 5, stride 1 and 2; other k with stride 1 or 2 run the same code with a run-time k;
// stride >= 3 or k > kMaxK go to the scalar reference.  Stride 2 loads 2*kLanes consecutive
// inputs per tap pair and splits them into even and odd columns.
//
// Borders: input rows are copied, zero-padded left and right, into a ring of rows in a 64 KiB
// stack scratch, and kernel rows above/below the plane point at a zero row, so every chunk,
// border or not, runs on plain loads with no bounds logic.  The copy writes whole vectors only
// (x86 loads that read a masked store's bytes soon after wait for it).  Rows too wide for the
// scratch are read in place: whole chunks inside the row, of output rows whose kernel rows all
// lie in the plane, on plain loads, the others through load_safe (partial loads: only in-row
// elements are read, the rest is zero; kernel rows outside the plane skipped).  Never reads
// outside the H*W input floats.  The last partial chunk of a row is recomputed overlapping the
// previous one (OW >= kLanes); rows narrower than a vector are stored partially (or whole while
// the vector fits in the plane, V::kWholeTailStores).  No alignment is assumed.  FMA order per
// output: kernel rows in turn (each its own chain for constant k, two alternating chains for
// run-time k, summed at the end), taps left to right, the same on every path.
//
// Several small planes (multi, kMulti): per group of kLanes channels the input planes are
// transposed in registers into a zero-padded tile T[ty][tx][kLanes channels] on the stack,
// outputs are computed kLanes pixels at a time (kLanes independent accumulators, one weight
// vector per tap, any k <= 7 and stride) and transposed back.  Every lane does useful work
// whatever the plane width, with no per-plane set-up.  Larger planes go plane by plane.
//
// Everything has internal linkage: each ISA file compiles its own copy with its own flags
// (kernels.h's rules for ISA files).
#pragma once

#include <cstddef>

#include "kernels/kernels.h"

namespace sk {
namespace {

template <class V>
struct DwConv {
  using T = typename V::T;
  using Wt = typename V::Wt;
  using Pair = typename V::Pair;
  static constexpr int L = V::kLanes;
  static constexpr int kScratch = 16384;  // floats of stack scratch (64 KiB)
  static constexpr int kMaxK = 31;
  static constexpr int kTileVecs = 1024;  // multi: tile vectors (AVX2 32 KiB, AVX-512 64 KiB)
  static constexpr int kMultiMaxTaps = 49;

  // row[i0 .. i0+L) with positions outside [0, W) as zero, reading only row[0 .. W).
  static T load_safe(const float* row, int W, int i0) {
    if (i0 >= 0) {
      if (i0 + L <= W) return V::load(row + i0);
      if (i0 >= W) return V::zero();
      return V::load_part(row + i0, W - i0);
    }
    const int sh = -i0;
    if (sh >= L) return V::zero();
    return V::load_shifted(row, sh, W < L - sh ? W : L - sh);
  }

  template <bool SAFE>
  static T load1(const float* row, int W, int i0) {
    return SAFE ? load_safe(row, W, i0) : V::load(row + i0);
  }
  template <bool SAFE>
  static Pair load2(const float* row, int W, int i0) {
    if (!SAFE) return V::load2(row, i0);
    // lo first (GCC evaluates arguments right to left): lo's bounds checks settle most of hi's
    const T lo = load_safe(row, W, i0);
    return V::pair(lo, load_safe(row, W, i0 + L));
  }

  // Tap i's weight: pre-set wv[i] when K is known (kept in registers), else from w.
  template <int K>
  static Wt tap(const Wt* wv, const float* w, int i) {
    return K ? wv[i] : V::weight(w + i);
  }

  // One vector of L outputs.  rows[ky]: kernel row ky's input row (null: outside the plane,
  // skipped); ix: the chunk's first input column in that row's coordinates.
  // K: compile-time kernel size (0: run-time k).  wv: K*K weights (K != 0).
  // SAFE: loads go through load_safe (row of W floats); else plain loads, all in bounds.
  template <int K, int S, bool SAFE>
  static inline __attribute__((always_inline)) T chunk(const float* const* rows, int W,
                                                       const float* w, const Wt* wv, int k,
                                                       int ix, T init) {
    const int kk = K ? K : k;
    constexpr int NA = K ? K : 2;
    T acc[NA];
    acc[0] = init;
    _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) acc[i] = V::zero();
    _Pragma("GCC unroll 8") for (int ky = 0; ky < kk; ++ky) {
      const float* row = rows[ky];
      if (SAFE && !row) continue;
      T& a = acc[K ? ky : (ky & 1)];
      // the taps from the kernel row's start (run-time k, stride 2: 3% faster than ky*kk + kx)
      const float* wr = w + ky * kk;
      const Wt* vr = K ? wv + ky * kk : wv;
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; kx += S) {
        if (S == 1) {
          a = V::fma(tap<K>(vr, wr, kx), load1<SAFE>(row, W, ix + kx), a);
        } else {
          const Pair p = load2<SAFE>(row, W, ix + kx);
          a = V::fma(tap<K>(vr, wr, kx), V::even(p), a);
          if (kx + 1 < kk) a = V::fma(tap<K>(vr, wr, kx + 1), V::odd(p), a);
        }
      }
    }
    _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) acc[0] = V::add(acc[0], acc[i]);
    return S == 2 ? V::s2_order(acc[0]) : acc[0];
  }

  // Two vectors of L outputs at the same columns of output rows oy and oy+1, from the kk + S
  // input rows rows[0 ..] (all present; plain loads): each input row is loaded once for both.
  template <int K, int S>
  static inline __attribute__((always_inline)) void chunk2(const float* const* rows,
                                                           const float* w, const Wt* wv, int k,
                                                           int ix, T init, T& out0, T& out1) {
    const int kk = K ? K : k;
    constexpr int NA = K ? K : 2;
    T a0[NA], a1[NA];
    a0[0] = a1[0] = init;
    _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) a0[i] = a1[i] = V::zero();
    _Pragma("GCC unroll 8") for (int r = 0; r < kk + S; ++r) {
      const float* row = rows[r] + ix;
      const bool u0 = r < kk, u1 = r >= S;  // row r is kernel row r of oy, r - S of oy + 1
      const int k0 = u0 ? r : 0, k1 = u1 ? r - S : 0;
      T& c0 = a0[K ? k0 : (r & 1)];
      T& c1 = a1[K ? k1 : (r & 1)];
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; kx += S) {
        if (S == 1) {
          const T v = V::load(row + kx);
          if (u0) c0 = V::fma(tap<K>(wv, w, k0 * kk + kx), v, c0);
          if (u1) c1 = V::fma(tap<K>(wv, w, k1 * kk + kx), v, c1);
        } else {
          const Pair p = V::load2(row, kx);
          const T ev = V::even(p);
          if (u0) c0 = V::fma(tap<K>(wv, w, k0 * kk + kx), ev, c0);
          if (u1) c1 = V::fma(tap<K>(wv, w, k1 * kk + kx), ev, c1);
          if (kx + 1 < kk) {
            const T od = V::odd(p);
            if (u0) c0 = V::fma(tap<K>(wv, w, k0 * kk + kx + 1), od, c0);
            if (u1) c1 = V::fma(tap<K>(wv, w, k1 * kk + kx + 1), od, c1);
          }
        }
      }
    }
    _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) {
      a0[0] = V::add(a0[0], a0[i]);
      a1[0] = V::add(a1[0], a1[i]);
    }
    out0 = S == 2 ? V::s2_order(a0[0]) : a0[0];
    out1 = S == 2 ? V::s2_order(a1[0]) : a1[0];
  }

  static float clampf(float v, float lo, float hi) {
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
  }

  // Input columns an L-output chunk reads, counted from its first input column.
  static int chunk_span(int k, int S) { return S == 1 ? k + L - 1 : ((k - 1) & ~1) + 2 * L; }

  // Width of a padded row: pad_l zeros, the W inputs, then zeros far enough that every chunk
  // (the last one starts at max(OW, L) - L outputs) reads inside the row.  Rounded up to whole
  // vectors past pad_l + W (the copy stores whole vectors).
  static int padded_width(const DwShape& s) {
    const int need = ((s.OW > L ? s.OW : L) - L) * s.stride + chunk_span(s.k, s.stride);
    const int have = s.pad_l + ((s.W + L - 1) & ~(L - 1));
    return ((have > need ? have : need) + L - 1) & ~(L - 1);
  }

  // Rows of the ring the padded path would use (0: it cannot run, use the direct path).
  // Output rows go in pairs, which need k + stride input rows.
  static int ring_rows(const DwShape& s, int Wp) {
    int R = kScratch / Wp - 1;  // one row of zeros for kernel rows outside the plane
    if (V::kShortRing) {  // a few rows beyond those in use, so the ring stays in L1
      const int cap = s.k + s.stride + 4 > 8 ? s.k + s.stride + 4 : 8;
      if (R > cap) R = cap;
    }
    if (R > s.H) R = s.H;
    return (R >= s.k + s.stride || R == s.H) ? R : 0;
  }

  // Main path: input rows are copied, zero-padded left and right, into a ring of R padded rows
  // on the stack (row iy in slot iy % R), as far ahead as the ring allows (loads then read rows
  // copied an output-row pair earlier, not the stores just made).  Kernel rows outside the
  // plane point at a zero row.  Then every chunk, border or not, runs on plain loads.
  template <int K, int S>
  static void plane_padded(const DwShape& s, const float* x, const float* w, float bias,
                           float lo, float hi, float* y, int Wp, int R) {
    const int kk = K ? K : s.k;
    const int H = s.H, W = s.W, OW = s.OW, pad_l = s.pad_l;
    alignas(sizeof(T)) float buf[kScratch];
    float* zero_row = buf + R * Wp;
    for (int i = 0; i < Wp; i += L) V::store(zero_row + i, V::zero());
    // a local copy of the taps: stores to y cannot alias it, so they stay in registers
    Wt wv[K ? K * K : 1];
    if (K)
      for (int i = 0; i < kk * kk; ++i) wv[i] = V::weight(w + i);
    const T vlo = V::set1(lo), vhi = V::set1(hi), vb = V::set1(bias);
    const float* rows[kMaxK + 2];
    const int nrows = kk + S;  // input rows of output rows oy and oy + 1
    int next_row = 0, next_slot = 0;  // the next input row to copy, and its slot
    // slot of input row iy0 = iy0 mod R (non-negative), advanced without divisions
    int slot0 = ((-s.pad_t) % R + R) % R;
    for (int oy = 0; oy < s.OH; oy += 2) {
      const int iy0 = oy * S - s.pad_t;
      // copy rows up to iy0 + R - 1: that evicts only rows below iy0, no longer needed
      // (R < nrows only when R == H: then the ring holds the whole plane, evicts nothing)
      const int ahead = iy0 + (R > nrows ? R : nrows);
      const int copy_end = ahead < H ? ahead : H;
      for (; next_row < copy_end;
           ++next_row, next_slot = next_slot + 1 == R ? 0 : next_slot + 1) {
        const float* src = x + static_cast<ptrdiff_t>(next_row) * W;
        float* d = buf + next_slot * Wp;
        // Whole vectors only (Wp >= pad_l + W rounded up to L): left zeros, right zeros, then
        // the row over them, its last vector a zero-filled partial load stored whole.
        for (int i = 0; i < pad_l; i += L) V::store(d + i, V::zero());
        for (int i = (pad_l + W) & ~(L - 1); i < Wp; i += L) V::store(d + i, V::zero());
        float* dst = d + pad_l;
        int i = 0;
        for (; i + L <= W; i += L) V::store(dst + i, V::load(src + i));
        if (i < W) V::store(dst + i, V::load_part(src + i, W - i));
      }
      int slot = slot0;
      for (int r = 0; r < nrows; ++r, slot = slot + 1 == R ? 0 : slot + 1) {
        const int iy = iy0 + r;
        rows[r] = (iy < 0 || iy >= H) ? zero_row : buf + slot * Wp;
      }
      for (int i = 0; i < 2 * S; ++i) slot0 = slot0 + 1 == R ? 0 : slot0 + 1;
      float* y0 = y + static_cast<ptrdiff_t>(oy) * OW;
      const bool pair = oy + 1 < s.OH;
      if (OW < L) {
        T a0, a1 = vb;
        if (pair)
          chunk2<K, S>(rows, w, wv, kk, 0, vb, a0, a1);
        else
          a0 = chunk<K, S, false>(rows, Wp, w, wv, kk, 0, vb);
        a0 = V::clamp(a0, vlo, vhi);
        a1 = V::clamp(a1, vlo, vhi);
        for (int j = 0; j < (pair ? 2 : 1); ++j) {
          float* yr = y0 + j * OW;
          const T a = j ? a1 : a0;
          // While L floats still fit in the plane, a whole store is fine: the extra lanes land
          // in the next output rows, which are written after this one.
          if (V::kWholeTailStores && static_cast<ptrdiff_t>(s.OH - oy - j) * OW >= L)
            V::store(yr, a);
          else
            V::store_part(yr, a, OW);
        }
        continue;
      }
      if (pair) {
        for (int ox = 0; ox < OW; ox += L) {
          const int oxc = ox + L > OW ? OW - L : ox;
          T a0, a1;
          chunk2<K, S>(rows, w, wv, kk, oxc * S, vb, a0, a1);
          V::store(y0 + oxc, V::clamp(a0, vlo, vhi));
          V::store(y0 + OW + oxc, V::clamp(a1, vlo, vhi));
        }
      } else {
        for (int ox = 0; ox < OW; ox += L) {
          const int oxc = ox + L > OW ? OW - L : ox;
          const T acc = chunk<K, S, false>(rows, Wp, w, wv, kk, oxc * S, vb);
          V::store(y0 + oxc, V::clamp(acc, vlo, vhi));
        }
      }
    }
  }

  // Fallback for rows too wide for the scratch: reads the plane directly; chunks whose loads
  // would leave the row use load_safe.
  template <int K, int S>
  static void plane_direct(const DwShape& s, const float* x, const float* w, float bias,
                           float lo, float hi, float* y) {
    const int kk = K ? K : s.k;
    const int H = s.H, W = s.W, OW = s.OW, pad_l = s.pad_l;
    const int span = chunk_span(kk, S);
    Wt wv[K ? K * K : 1];
    if (K)
      for (int i = 0; i < kk * kk; ++i) wv[i] = V::weight(w + i);
    const T vlo = V::set1(lo), vhi = V::set1(hi), vb = V::set1(bias);
    const float bias_only = clampf(bias, lo, hi);
    const float* rows[kMaxK];
    for (int oy = 0; oy < s.OH; ++oy) {
      const int iy0 = oy * S - s.pad_t;
      bool any = false, all = true;
      for (int ky = 0; ky < kk; ++ky) {
        const int iy = iy0 + ky;
        const bool in = iy >= 0 && iy < H;
        rows[ky] = in ? x + static_cast<ptrdiff_t>(iy) * W : nullptr;
        any = any || in;
        all = all && in;
      }
      float* yr = y + static_cast<ptrdiff_t>(oy) * OW;
      if (!any) {  // the whole window is padding
        for (int ox = 0; ox < OW; ++ox) yr[ox] = bias_only;
        continue;
      }
      if (OW < L) {
        const T acc = chunk<K, S, true>(rows, W, w, wv, kk, -pad_l, vb);
        V::store_part(yr, V::clamp(acc, vlo, vhi), OW);
        continue;
      }
      // Plain loads for the whole chunks from ox_lo to ox_hi: every kernel row present (a null
      // row is only skipped on the SAFE path) and all their columns inside the row.
      int ox_lo = OW, ox_hi = 0;
      if (all) {
        int last = W - span + pad_l;  // ix + span <= W up to ox = last / S
        last = last < 0 ? -1 : last / S;
        if (last > OW - L) last = OW - L;
        ox_lo = ((pad_l + S - 1) / S + L - 1) / L * L;  // ix >= 0 from here
        ox_hi = last < 0 ? 0 : last / L * L + L;
      }
      for (int ox = 0; ox < OW; ox += L) {
        if (ox == ox_lo) {
          for (; ox < ox_hi; ox += L) {
            const T acc = chunk<K, S, false>(rows, W, w, wv, kk, ox * S - pad_l, vb);
            V::store(yr + ox, V::clamp(acc, vlo, vhi));
          }
          if (ox >= OW) break;
        }
        const int oxc = ox + L > OW ? OW - L : ox;
        const T acc = chunk<K, S, true>(rows, W, w, wv, kk, oxc * S - pad_l, vb);
        V::store(yr + oxc, V::clamp(acc, vlo, vhi));
      }
    }
  }

  template <int K, int S>
  static void plane_ks(const DwShape& s, const float* x, const float* w, float bias, float lo,
                       float hi, float* y) {
    const int Wp = padded_width(s);
    const int R = Wp < kScratch ? ring_rows(s, Wp) : 0;
    if (R > 0)
      plane_padded<K, S>(s, x, w, bias, lo, hi, y, Wp, R);
    else
      plane_direct<K, S>(s, x, w, bias, lo, hi, y);
  }

  // DwConvFn.  Stride >= 3 or a kernel too large for the vector paths is rare, so the scalar
  // reference (compiled without ISA flags) does it rather than a copy of it here.
  static void plane(const DwShape& s, const float* x, const float* w, float bias, float lo,
                    float hi, float* y) {
    if (s.k <= kMaxK && s.stride == 1) {
      if (s.k == 3) return plane_ks<3, 1>(s, x, w, bias, lo, hi, y);
      if (s.k == 5) return plane_ks<5, 1>(s, x, w, bias, lo, hi, y);
      return plane_ks<0, 1>(s, x, w, bias, lo, hi, y);
    }
    if (s.k <= kMaxK && s.stride == 2) {
      if (s.k == 3) return plane_ks<3, 2>(s, x, w, bias, lo, hi, y);
      if (s.k == 5) return plane_ks<5, 2>(s, x, w, bias, lo, hi, y);
      return plane_ks<0, 2>(s, x, w, bias, lo, hi, y);
    }
    kernels_ref()->dwconv(s, x, w, bias, lo, hi, y);
  }

  // ---- several small planes, L channels per vector ----------------------------------------
  // Tile extent the outputs read: rows/cols [-pad, -pad + extent) of the input.
  static int tile_extent(int O, int S, int k) { return (O - 1) * S + k; }

  static bool multi_fits(const DwShape& s) {
    if (s.k * s.k > kMultiMaxTaps || s.stride < 1) return false;
    const long th = tile_extent(s.OH, s.stride, s.k), tw = tile_extent(s.OW, s.stride, s.k);
    // Measured on Zen3 with AVX2 (3x3, all channels in one call) against the row kernel plane
    // by plane: 512x14x14 0.061 vs 0.139 ms, 1024x7x7 0.041 vs 0.075, 256x28x28 s2 0.052 vs
    // 0.072, 256x28x28 s1 0.111 vs 0.130.
    return th * tw <= kTileVecs && static_cast<long>(s.H) * s.W <= kTileVecs;
  }

  static void multi_tile(const DwShape& s, int nch, const float* x, const float* w,
                         const float* bias, float lo, float hi, float* y) {
    const int H = s.H, W = s.W, OH = s.OH, OW = s.OW, k = s.k, S = s.stride, kk = k * k;
    const int TH = tile_extent(OH, S, k), TW = tile_extent(OW, S, k);
    const int HW = H * W, OHW = OH * OW;
    T tile[kTileVecs];
    for (int i = 0; i < TH * TW; ++i) tile[i] = V::zero();  // borders stay zero
    // Tile index of each input pixel (-1: not read by any output), and of each output pixel's
    // first tap; the output table is padded to a multiple of L with a valid index.
    int in_at[kTileVecs], out_at[kTileVecs + L];  // multi_fits checked H*W <= kTileVecs
    int n_in = 0;
    for (int iy = 0; iy < H; ++iy)
      for (int ix = 0; ix < W; ++ix, ++n_in) {
        const int ty = iy + s.pad_t, tx = ix + s.pad_l;
        in_at[n_in] = (ty < TH && tx < TW) ? ty * TW + tx : -1;
      }
    const int OHWp = (OHW + L - 1) & ~(L - 1);
    for (int p = 0; p < OHWp; ++p)
      out_at[p] = p < OHW ? (p / OW) * S * TW + (p % OW) * S : 0;
    int tap_at[kMultiMaxTaps];
    for (int ky = 0; ky < k; ++ky)
      for (int kx = 0; kx < k; ++kx) tap_at[ky * k + kx] = ky * TW + kx;
    const typename V::Transpose transpose{};
    const T vlo = V::set1(lo), vhi = V::set1(hi);
    for (int c0 = 0; c0 < nch; c0 += L) {
      const int cnt = nch - c0 < L ? nch - c0 : L;
      // weights and bias, transposed to one vector per tap
      T wt[kMultiMaxTaps];
      for (int t = 0; t < kk; ++t)
        wt[t] = V::gather(w + static_cast<ptrdiff_t>(c0) * kk + t, kk, cnt);
      const T vb = V::load_part(bias + c0, cnt);
      const float* xc = x + static_cast<ptrdiff_t>(c0) * HW;
      float* yc = y + static_cast<ptrdiff_t>(c0) * OHW;
      // input: L pixels x L channels at a time
      for (int p0 = 0; p0 < HW; p0 += L) {
        const int np = HW - p0 < L ? HW - p0 : L;
        T r[L];
        _Pragma("GCC unroll 16") for (int c = 0; c < L; ++c)
          r[c] = c < cnt ? V::load_part(xc + static_cast<ptrdiff_t>(c) * HW + p0, np)
                         : V::zero();
        transpose(r);
        for (int j = 0; j < np; ++j) {
          const int at = in_at[p0 + j];
          if (at >= 0) tile[at] = r[j];
        }
      }
      // output: L pixels at a time
      for (int p0 = 0; p0 < OHW; p0 += L) {
        T acc[L];
        const int* oa = out_at + p0;
        _Pragma("GCC unroll 16") for (int j = 0; j < L; ++j) acc[j] = vb;
        for (int t = 0; t < kk; ++t) {
          const T wv = wt[t];
          const T* tt = tile + tap_at[t];
          _Pragma("GCC unroll 16") for (int j = 0; j < L; ++j)
            acc[j] = V::fma(wv, tt[oa[j]], acc[j]);
        }
        _Pragma("GCC unroll 16") for (int j = 0; j < L; ++j)
          acc[j] = V::clamp(acc[j], vlo, vhi);
        transpose(acc);
        const int np = OHW - p0 < L ? OHW - p0 : L;
        if (np == L) {
          for (int c = 0; c < cnt; ++c)
            V::store(yc + static_cast<ptrdiff_t>(c) * OHW + p0, acc[c]);
        } else {
          for (int c = 0; c < cnt; ++c)
            V::store_part(yc + static_cast<ptrdiff_t>(c) * OHW + p0, acc[c], np);
        }
      }
    }
  }

  // DwMultiFn: the tile while it fits (kMulti), else plane by plane.
  static void multi(const DwShape& s, int nch, const float* x, const float* w,
                    const float* bias, float lo, float hi, float* y) {
    if (nch <= 0) return;
    if constexpr (V::kMulti) {
      if (multi_fits(s)) return multi_tile(s, nch, x, w, bias, lo, hi, y);
    }
    const ptrdiff_t in = static_cast<ptrdiff_t>(s.H) * s.W;
    const ptrdiff_t out = static_cast<ptrdiff_t>(s.OH) * s.OW;
    for (int c = 0; c < nch; ++c)
      plane(s, x + c * in, w + static_cast<ptrdiff_t>(c) * s.k * s.k, bias[c], lo, hi,
            y + c * out);
  }
};

}  // namespace
}  // namespace sk
