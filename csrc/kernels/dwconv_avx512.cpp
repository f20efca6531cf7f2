// AVX-512F depthwise convolution of one channel plane (compiled with -mavx512f/vl/bw/dq).
//
// The AVX2 kernel's structure (see dwconv_avx2.cpp) with 16 output columns per vector:
// input rows copied zero-padded into a ring on the stack, two output rows per pass, taps
// unrolled for k = 3 and 5 (run-time k otherwise), stride >= 3 scalar.  Stride 2 splits 32
// consecutive inputs into even and odd columns with one vpermt2ps each, already in order.
// Partial vectors use mask registers: masked loads never touch masked-off lanes, so no read
// leaves the plane.  No alignment is assumed.
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_ps() through, which -Wmaybe-uninitialized
// reports as a false positive at every use of _mm512_max_ps/_mm512_min_ps.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/x86_intrinsics.h"

#include "kernels/isa_parts.h"
#include "kernels/kernels.h"

namespace sk {
namespace {

inline __mmask16 tail_mask(int m) { return static_cast<__mmask16>((1u << m) - 1u); }

// row[i0 .. i0+16) with positions outside [0, W) as zero, reading only row[0 .. W).
inline __m512 load16_safe(const float* row, int W, int i0) {
  if (i0 >= 0) {
    if (i0 + 16 <= W) return _mm512_loadu_ps(row + i0);
    if (i0 >= W) return _mm512_setzero_ps();
    return _mm512_maskz_loadu_ps(tail_mask(W - i0), row + i0);
  }
  const int sh = -i0;
  if (sh >= 16) return _mm512_setzero_ps();
  const int cnt = W < 16 - sh ? W : 16 - sh;
  // expand row[0 .. cnt) into lanes sh .. sh+cnt-1
  return _mm512_maskz_expandloadu_ps(static_cast<__mmask16>(tail_mask(cnt) << sh), row);
}

template <bool SAFE>
inline __m512 load16(const float* row, int W, int i0) {
  return SAFE ? load16_safe(row, W, i0) : _mm512_loadu_ps(row + i0);
}

inline __m512i even_idx() {
  return _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
}
inline __m512i odd_idx() {
  return _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// One vector of 16 outputs; rows[ky] null = outside the plane (SAFE path only).
template <int K, int S, bool SAFE>
__attribute__((always_inline)) inline __m512 dw_chunk(const float* const* rows, int W,
                                                      const float* w, const __m512* wv, int k,
                                                      int ix, __m512 init) {
  const int kk = K ? K : k;
  constexpr int NA = K ? K : 2;
  __m512 acc[NA];
  acc[0] = init;
  _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) acc[i] = _mm512_setzero_ps();
  const __m512i ei = even_idx(), oi = odd_idx();
  _Pragma("GCC unroll 8") for (int ky = 0; ky < kk; ++ky) {
    const float* row = rows[ky];
    if (SAFE && !row) continue;
    __m512& a = acc[K ? ky : (ky & 1)];
    if (S == 1) {
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; ++kx) {
        const __m512 wk = K ? wv[ky * kk + kx] : _mm512_set1_ps(w[ky * kk + kx]);
        a = _mm512_fmadd_ps(wk, load16<SAFE>(row, W, ix + kx), a);
      }
    } else {
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; kx += 2) {
        const __m512 lo = load16<SAFE>(row, W, ix + kx);
        const __m512 hi = load16<SAFE>(row, W, ix + kx + 16);
        const __m512 w0 = K ? wv[ky * kk + kx] : _mm512_set1_ps(w[ky * kk + kx]);
        a = _mm512_fmadd_ps(w0, _mm512_permutex2var_ps(lo, ei, hi), a);
        if (kx + 1 < kk) {
          const __m512 w1 = K ? wv[ky * kk + kx + 1] : _mm512_set1_ps(w[ky * kk + kx + 1]);
          a = _mm512_fmadd_ps(w1, _mm512_permutex2var_ps(lo, oi, hi), a);
        }
      }
    }
  }
  _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) acc[0] = _mm512_add_ps(acc[0], acc[i]);
  return acc[0];
}

// Output rows oy and oy+1 at the same 16 columns from input rows rows[0 .. kk+S) (padded,
// all present): each input row loaded once for both.
template <int K, int S>
__attribute__((always_inline)) inline void dw_chunk2(const float* const* rows, const float* w,
                                                     const __m512* wv, int k, int ix,
                                                     __m512 init, __m512& out0, __m512& out1) {
  const int kk = K ? K : k;
  constexpr int NA = K ? K : 2;
  __m512 a0[NA], a1[NA];
  a0[0] = a1[0] = init;
  _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) a0[i] = a1[i] = _mm512_setzero_ps();
  const __m512i ei = even_idx(), oi = odd_idx();
  _Pragma("GCC unroll 8") for (int r = 0; r < kk + S; ++r) {
    const float* row = rows[r] + ix;
    const bool u0 = r < kk, u1 = r >= S;  // row r is kernel row r of oy, r - S of oy + 1
    const int k0 = u0 ? r : 0, k1 = u1 ? r - S : 0;
    __m512& c0 = a0[K ? k0 : (r & 1)];
    __m512& c1 = a1[K ? k1 : (r & 1)];
    const int n_taps = S == 1 ? kk : (kk + 1) / 2 * 2;
    _Pragma("GCC unroll 8") for (int kx = 0; kx < n_taps; kx += S) {
      __m512 v0, v1 = _mm512_setzero_ps();
      if (S == 1) {
        v0 = _mm512_loadu_ps(row + kx);
      } else {
        const __m512 lo = _mm512_loadu_ps(row + kx), hi = _mm512_loadu_ps(row + kx + 16);
        v0 = _mm512_permutex2var_ps(lo, ei, hi);
        if (kx + 1 < kk) v1 = _mm512_permutex2var_ps(lo, oi, hi);
      }
      const __m512 w00 = K ? wv[k0 * kk + kx] : _mm512_set1_ps(w[k0 * kk + kx]);
      const __m512 w10 = K ? wv[k1 * kk + kx] : _mm512_set1_ps(w[k1 * kk + kx]);
      if (u0) c0 = _mm512_fmadd_ps(w00, v0, c0);
      if (u1) c1 = _mm512_fmadd_ps(w10, v0, c1);
      if (S == 2 && kx + 1 < kk) {
        const __m512 w01 = K ? wv[k0 * kk + kx + 1] : _mm512_set1_ps(w[k0 * kk + kx + 1]);
        const __m512 w11 = K ? wv[k1 * kk + kx + 1] : _mm512_set1_ps(w[k1 * kk + kx + 1]);
        if (u0) c0 = _mm512_fmadd_ps(w01, v1, c0);
        if (u1) c1 = _mm512_fmadd_ps(w11, v1, c1);
      }
    }
  }
  _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) {
    a0[0] = _mm512_add_ps(a0[0], a0[i]);
    a1[0] = _mm512_add_ps(a1[0], a1[i]);
  }
  out0 = a0[0];
  out1 = a1[0];
}

inline float clampf(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

constexpr int kScratch = 16384;  // floats of stack scratch (64 KiB)
constexpr int kMaxK = 31;

// Input columns a 16-output chunk reads, counted from its first input column.
inline int chunk_span(int k, int S) { return S == 1 ? k + 15 : ((k - 1) & ~1) + 32; }

// Padded row width: every chunk's reads (the last starts at max(OW, 16) - 16) and the
// whole-vector copy of the row (pad_l + W rounded up to 16) fit; a multiple of 16.
inline int padded_width(const DwShape& s) {
  const int need = ((s.OW > 16 ? s.OW : 16) - 16) * s.stride + chunk_span(s.k, s.stride);
  const int have = s.pad_l + ((s.W + 15) & ~15);
  return ((have > need ? have : need) + 15) & ~15;
}

inline int ring_rows(const DwShape& s, int Wp) {
  int R = kScratch / Wp - 1;  // one zero row
  if (R > s.H) R = s.H;
  return (R >= s.k + s.stride || R == s.H) ? R : 0;
}

template <int K, int S>
void dw_plane_padded(const DwShape& s, const float* x, const float* w, float bias, float lo,
                     float hi, float* y, int Wp, int R) {
  const int kk = K ? K : s.k;
  const int H = s.H, W = s.W, OW = s.OW, pad_l = s.pad_l;
  alignas(64) float buf[kScratch];
  float* zero_row = buf + R * Wp;
  for (int i = 0; i < Wp; i += 16) _mm512_store_ps(zero_row + i, _mm512_setzero_ps());
  __m512 wv[K ? K * K : 1];
  if (K)
    for (int i = 0; i < kk * kk; ++i) wv[i] = _mm512_set1_ps(w[i]);
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi), vb = _mm512_set1_ps(bias);
  const float* rows[kMaxK + 2];
  const int nrows = kk + S;
  int next_row = 0, next_slot = 0;
  int slot0 = ((-s.pad_t) % R + R) % R;
  for (int oy = 0; oy < s.OH; oy += 2) {
    const int iy0 = oy * S - s.pad_t;
    const int ahead = iy0 + (R > nrows ? R : nrows);
    const int copy_end = ahead < H ? ahead : H;
    for (; next_row < copy_end; ++next_row, next_slot = next_slot + 1 == R ? 0 : next_slot + 1) {
      const float* src = x + static_cast<ptrdiff_t>(next_row) * W;
      float* d = buf + next_slot * Wp;
      for (int i = 0; i < pad_l; i += 16) _mm512_storeu_ps(d + i, _mm512_setzero_ps());
      for (int i = (pad_l + W) & ~15; i < Wp; i += 16) _mm512_store_ps(d + i, _mm512_setzero_ps());
      float* dst = d + pad_l;
      int i = 0;
      for (; i + 16 <= W; i += 16) _mm512_storeu_ps(dst + i, _mm512_loadu_ps(src + i));
      if (i < W) _mm512_storeu_ps(dst + i, _mm512_maskz_loadu_ps(tail_mask(W - i), src + i));
    }
    int slot = slot0;
    for (int r = 0; r < nrows; ++r, slot = slot + 1 == R ? 0 : slot + 1) {
      const int iy = iy0 + r;
      rows[r] = (iy < 0 || iy >= H) ? zero_row : buf + slot * Wp;
    }
    for (int i = 0; i < 2 * S; ++i) slot0 = slot0 + 1 == R ? 0 : slot0 + 1;
    float* y0 = y + static_cast<ptrdiff_t>(oy) * OW;
    const bool pair = oy + 1 < s.OH;
    if (OW < 16) {
      const __mmask16 m = tail_mask(OW);
      __m512 a0, a1 = vb;
      if (pair)
        dw_chunk2<K, S>(rows, w, wv, kk, 0, vb, a0, a1);
      else
        a0 = dw_chunk<K, S, false>(rows, Wp, w, wv, kk, 0, vb);
      _mm512_mask_storeu_ps(y0, m, _mm512_min_ps(vhi, _mm512_max_ps(vlo, a0)));
      if (pair) _mm512_mask_storeu_ps(y0 + OW, m, _mm512_min_ps(vhi, _mm512_max_ps(vlo, a1)));
      continue;
    }
    if (pair) {
      for (int ox = 0; ox < OW; ox += 16) {
        const int oxc = ox + 16 > OW ? OW - 16 : ox;
        __m512 a0, a1;
        dw_chunk2<K, S>(rows, w, wv, kk, oxc * S, vb, a0, a1);
        _mm512_storeu_ps(y0 + oxc, _mm512_min_ps(vhi, _mm512_max_ps(vlo, a0)));
        _mm512_storeu_ps(y0 + OW + oxc, _mm512_min_ps(vhi, _mm512_max_ps(vlo, a1)));
      }
    } else {
      for (int ox = 0; ox < OW; ox += 16) {
        const int oxc = ox + 16 > OW ? OW - 16 : ox;
        const __m512 acc = dw_chunk<K, S, false>(rows, Wp, w, wv, kk, oxc * S, vb);
        _mm512_storeu_ps(y0 + oxc, _mm512_min_ps(vhi, _mm512_max_ps(vlo, acc)));
      }
    }
  }
}

// Rows too wide for the scratch: read the plane directly, border chunks via load16_safe.
template <int K, int S>
void dw_plane_direct(const DwShape& s, const float* x, const float* w, float bias, float lo,
                     float hi, float* y) {
  const int kk = K ? K : s.k;
  const int H = s.H, W = s.W, OW = s.OW;
  const int span = chunk_span(kk, S);
  __m512 wv[K ? K * K : 1];
  if (K)
    for (int i = 0; i < kk * kk; ++i) wv[i] = _mm512_set1_ps(w[i]);
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi), vb = _mm512_set1_ps(bias);
  const float bias_only = clampf(bias, lo, hi);
  const float* rows[kMaxK];
  for (int oy = 0; oy < s.OH; ++oy) {
    const int iy0 = oy * S - s.pad_t;
    bool any = false;
    for (int ky = 0; ky < kk; ++ky) {
      const int iy = iy0 + ky;
      const bool in = iy >= 0 && iy < H;
      rows[ky] = in ? x + static_cast<ptrdiff_t>(iy) * W : nullptr;
      any = any || in;
    }
    float* yr = y + static_cast<ptrdiff_t>(oy) * OW;
    if (!any) {
      for (int ox = 0; ox < OW; ++ox) yr[ox] = bias_only;
      continue;
    }
    if (OW < 16) {
      const __m512 acc = dw_chunk<K, S, true>(rows, W, w, wv, kk, -s.pad_l, vb);
      _mm512_mask_storeu_ps(yr, tail_mask(OW), _mm512_min_ps(vhi, _mm512_max_ps(vlo, acc)));
      continue;
    }
    for (int ox = 0; ox < OW; ox += 16) {
      const int oxc = ox + 16 > OW ? OW - 16 : ox;
      const int ix = oxc * S - s.pad_l;
      bool fast = ix >= 0 && ix + span <= W;
      for (int ky = 0; ky < kk && fast; ++ky) fast = rows[ky] != nullptr;
      const __m512 acc = fast ? dw_chunk<K, S, false>(rows, W, w, wv, kk, ix, vb)
                              : dw_chunk<K, S, true>(rows, W, w, wv, kk, ix, vb);
      _mm512_storeu_ps(yr + oxc, _mm512_min_ps(vhi, _mm512_max_ps(vlo, acc)));
    }
  }
}

template <int K, int S>
void dw_plane(const DwShape& s, const float* x, const float* w, float bias, float lo, float hi,
              float* y) {
  const int Wp = padded_width(s);
  const int R = Wp < kScratch ? ring_rows(s, Wp) : 0;
  if (R > 0)
    dw_plane_padded<K, S>(s, x, w, bias, lo, hi, y, Wp, R);
  else
    dw_plane_direct<K, S>(s, x, w, bias, lo, hi, y);
}

// Stride >= 3 or a kernel too large for the vector paths: rare, so the scalar reference
// (compiled without ISA flags) does it rather than a copy of it here.
void dw_plane_scalar(const DwShape& s, const float* x, const float* w, float bias, float lo,
                     float hi, float* y) {
  kernels_ref()->dwconv(s, x, w, bias, lo, hi, y);
}

// ---- small planes, 16 channels per vector ----------------------------------------------
// Per group of 16 channels: the input planes are transposed (16x16 blocks in registers) into
// a zero-padded tile T[ty][tx][16 channels] on the stack, the outputs are computed 16 pixels
// at a time (16 independent accumulators, one broadcast-free weight vector per tap) and
// transposed back into the 16 output planes.  Every lane does useful work whatever the plane
// width, and there is no per-plane set-up; used while the tile fits kTileVecs vectors.
constexpr int kTileVecs = 1024;  // 64 KiB
constexpr int kMultiMaxTaps = 49;

// Butterfly transpose of a 16x16 block held as 16 rows: stage h swaps bit h of the row index
// with bit h of the column index; the four stages together swap all bits.
struct TransposeIdx {
  __m512i a[4], b[4];
  TransposeIdx() {
    for (int st = 0; st < 4; ++st) {
      const int h = 8 >> st;
      alignas(64) int ia[16], ib[16];
      for (int c = 0; c < 16; ++c) {
        ia[c] = (c & h) ? 16 + c - h : c;
        ib[c] = (c & h) ? 16 + c : c + h;
      }
      a[st] = _mm512_load_si512(ia);
      b[st] = _mm512_load_si512(ib);
    }
  }
};

__attribute__((always_inline)) inline void transpose16(__m512* r, const TransposeIdx& t) {
  _Pragma("GCC unroll 4") for (int st = 0; st < 4; ++st) {
    const int h = 8 >> st;
    _Pragma("GCC unroll 16") for (int i = 0; i < 16; ++i) {
      if (i & h) continue;
      const __m512 a = r[i], b = r[i + h];
      r[i] = _mm512_permutex2var_ps(a, t.a[st], b);
      r[i + h] = _mm512_permutex2var_ps(a, t.b[st], b);
    }
  }
}

// Tile extent the outputs read: rows/cols [-pad, -pad + extent) of the input.
inline int tile_extent(int O, int S, int k) { return (O - 1) * S + k; }

bool multi_fits(const DwShape& s) {
  if (s.k * s.k > kMultiMaxTaps || s.stride < 1) return false;
  const long th = tile_extent(s.OH, s.stride, s.k), tw = tile_extent(s.OW, s.stride, s.k);
  return th * tw <= kTileVecs;
}

void dw_multi16(const DwShape& s, int nch, const float* x, const float* w, const float* bias,
                float lo, float hi, float* y) {
  const int H = s.H, W = s.W, OH = s.OH, OW = s.OW, k = s.k, S = s.stride, kk = k * k;
  const int TH = tile_extent(OH, S, k), TW = tile_extent(OW, S, k);
  const int HW = H * W, OHW = OH * OW;
  alignas(64) float tile[kTileVecs * 16];
  __m512* T = reinterpret_cast<__m512*>(tile);
  for (int i = 0; i < TH * TW; ++i) T[i] = _mm512_setzero_ps();  // borders stay zero
  // Tile index of each input pixel (-1: not read by any output), and of each output pixel's
  // first tap; the output table is padded to a multiple of 16 with a valid index.
  int in_at[kTileVecs], out_at[kTileVecs + 16];  // the caller checked H*W <= kTileVecs
  int n_in = 0;
  for (int iy = 0; iy < H; ++iy)
    for (int ix = 0; ix < W; ++ix, ++n_in) {
      const int ty = iy + s.pad_t, tx = ix + s.pad_l;
      in_at[n_in] = (ty < TH && tx < TW) ? ty * TW + tx : -1;
    }
  const int OHWp = (OHW + 15) & ~15;
  for (int p = 0; p < OHWp; ++p)
    out_at[p] = p < OHW ? (p / OW) * S * TW + (p % OW) * S : 0;
  int tap_at[kMultiMaxTaps];
  for (int ky = 0; ky < k; ++ky)
    for (int kx = 0; kx < k; ++kx) tap_at[ky * k + kx] = ky * TW + kx;
  const TransposeIdx ti;
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  for (int c0 = 0; c0 < nch; c0 += 16) {
    const int cnt = nch - c0 < 16 ? nch - c0 : 16;
    const __mmask16 cmask = tail_mask(cnt);
    // Weights and bias, transposed to one vector per tap.
    __m512 wt[kMultiMaxTaps];
    for (int t = 0; t < kk; ++t)
      wt[t] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), cmask,
                                       _mm512_mullo_epi32(_mm512_set1_epi32(kk),
                                                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8,
                                                                            9, 10, 11, 12, 13, 14, 15)),
                                       w + static_cast<ptrdiff_t>(c0) * kk + t, 4);
    const __m512 vb = _mm512_maskz_loadu_ps(cmask, bias + c0);
    const float* xc = x + static_cast<ptrdiff_t>(c0) * HW;
    float* yc = y + static_cast<ptrdiff_t>(c0) * OHW;
    // Input: 16 pixels x 16 channels at a time.
    for (int p0 = 0; p0 < HW; p0 += 16) {
      const int np = HW - p0 < 16 ? HW - p0 : 16;
      const __mmask16 pm = tail_mask(np);
      __m512 r[16];
      _Pragma("GCC unroll 16") for (int c = 0; c < 16; ++c)
        r[c] = c < cnt ? _mm512_maskz_loadu_ps(pm, xc + static_cast<ptrdiff_t>(c) * HW + p0)
                       : _mm512_setzero_ps();
      transpose16(r, ti);
      for (int j = 0; j < np; ++j) {
        const int at = in_at[p0 + j];
        if (at >= 0) T[at] = r[j];
      }
    }
    // Output: 16 pixels at a time.
    for (int p0 = 0; p0 < OHW; p0 += 16) {
      __m512 acc[16];
      const int* oa = out_at + p0;
      _Pragma("GCC unroll 16") for (int j = 0; j < 16; ++j) acc[j] = vb;
      for (int t = 0; t < kk; ++t) {
        const __m512 wv = wt[t];
        const __m512* Tt = T + tap_at[t];
        _Pragma("GCC unroll 16") for (int j = 0; j < 16; ++j)
          acc[j] = _mm512_fmadd_ps(wv, Tt[oa[j]], acc[j]);
      }
      _Pragma("GCC unroll 16") for (int j = 0; j < 16; ++j)
        acc[j] = _mm512_min_ps(vhi, _mm512_max_ps(vlo, acc[j]));
      transpose16(acc, ti);
      const int np = OHW - p0 < 16 ? OHW - p0 : 16;
      const __mmask16 pm = tail_mask(np);
      for (int c = 0; c < cnt; ++c)
        _mm512_mask_storeu_ps(yc + static_cast<ptrdiff_t>(c) * OHW + p0, pm, acc[c]);
    }
  }
}

}  // namespace

void dwconv_multi_avx512(const DwShape& s, int nch, const float* x, const float* w,
                         const float* bias, float lo, float hi, float* y) {
  if (nch <= 0) return;
  if (multi_fits(s) && static_cast<long>(s.H) * s.W <= kTileVecs)
    return dw_multi16(s, nch, x, w, bias, lo, hi, y);
  const ptrdiff_t plane = static_cast<ptrdiff_t>(s.H) * s.W;
  const ptrdiff_t oplane = static_cast<ptrdiff_t>(s.OH) * s.OW;
  for (int c = 0; c < nch; ++c)
    dwconv_avx512(s, x + c * plane, w + static_cast<ptrdiff_t>(c) * s.k * s.k, bias[c], lo, hi,
                  y + c * oplane);
}

void dwconv_avx512(const DwShape& s, const float* x, const float* w, float bias, float lo,
                   float hi, float* y) {
  if (s.k > kMaxK) return dw_plane_scalar(s, x, w, bias, lo, hi, y);
  if (s.stride == 1) {
    if (s.k == 3) return dw_plane<3, 1>(s, x, w, bias, lo, hi, y);
    if (s.k == 5) return dw_plane<5, 1>(s, x, w, bias, lo, hi, y);
    return dw_plane<0, 1>(s, x, w, bias, lo, hi, y);
  }
  if (s.stride == 2) {
    if (s.k == 3) return dw_plane<3, 2>(s, x, w, bias, lo, hi, y);
    if (s.k == 5) return dw_plane<5, 2>(s, x, w, bias, lo, hi, y);
    return dw_plane<0, 2>(s, x, w, bias, lo, hi, y);
  }
  dw_plane_scalar(s, x, w, bias, lo, hi, y);
}

}  // namespace sk
