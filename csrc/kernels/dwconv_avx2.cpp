// AVX2+FMA depthwise convolution of one channel plane (compiled with -mavx2 -mfma).
//
// Vectorised over 8 output columns, two output rows per pass (each input row loaded once
// for both; two independent sets of FMA chains).  Taps are unrolled and the weights
// broadcast once per plane for k = 3 and 5, stride 1 and 2; other k with stride 1 or 2 run
// the same code with a run-time k; stride >= 3 (or k > 31) runs a scalar loop.  Stride 2
// loads 16 consecutive inputs per tap pair and splits them into even and odd columns with one
// shuffle each; the lane order that leaves ([0 1 4 5 2 3 6 7]) is the same for every tap, so
// it is undone once per output vector, before the store.
//
// Borders: input rows are copied, zero-padded left and right, into a ring of rows in a 64 KiB
// stack scratch (the whole plane when it fits: MobileNet's 112x112 does), and kernel rows
// above/below the plane point at a zero row, so every chunk runs on plain loads with no
// bounds logic.  Rows too wide for the scratch are read in place, border chunks through
// load8_safe (masked loads: only in-row elements are read, the rest is zero).
// Never reads outside the H*W input floats; the last partial chunk of a row is recomputed
// overlapping the previous one (OW >= 8), else stored whole while 8 floats still fit in the
// output plane (masked store for the last rows).  No alignment is assumed.
#include <immintrin.h>

#include "kernels/isa_parts.h"
#include "kernels/kernels.h"

namespace sk {
namespace {

alignas(32) const int32_t kTailMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                          0,  0,  0,  0,  0,  0,  0,  0};

inline __m256i tail_mask(int m) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMask + 8 - m));
}

// row[i0 .. i0+8) with positions outside [0, W) as zero, reading only row[0 .. W).
inline __m256 load8_safe(const float* row, int W, int i0) {
  if (i0 >= 0) {
    if (i0 + 8 <= W) return _mm256_loadu_ps(row + i0);
    if (i0 >= W) return _mm256_setzero_ps();
    return _mm256_maskload_ps(row + i0, tail_mask(W - i0));
  }
  const int sh = -i0;
  if (sh >= 8) return _mm256_setzero_ps();
  const int cnt = W < 8 - sh ? W : 8 - sh;
  const __m256 v = _mm256_maskload_ps(row, tail_mask(cnt));  // v[j] = row[j], j < cnt
  const __m256i idx =
      _mm256_sub_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(sh));
  const __m256 moved = _mm256_permutevar8x32_ps(v, idx);  // lane i <- v[i - sh]
  const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(-1)));
  return _mm256_and_ps(moved, keep);
}

template <bool SAFE>
inline __m256 load8(const float* row, int W, int i0) {
  return SAFE ? load8_safe(row, W, i0) : _mm256_loadu_ps(row + i0);
}

// One vector of 8 outputs.  rows[ky]: kernel row ky's input row (null: outside the plane,
// skipped); ix: the chunk's first input column in that row's coordinates.
// K: compile-time kernel size (0: run-time k).  wv: K*K broadcast weights (K != 0).
// SAFE: loads go through load8_safe (row of W floats); else plain loads, all in bounds.
template <int K, int S, bool SAFE>
__attribute__((always_inline)) inline __m256 dw_chunk(const float* const* rows, int W,
                                                      const float* w, const __m256* wv, int k,
                                                      int ix, __m256 init) {
  const int kk = K ? K : k;
  constexpr int NA = K ? K : 2;
  __m256 acc[NA];
  acc[0] = init;
  _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) acc[i] = _mm256_setzero_ps();
  _Pragma("GCC unroll 8") for (int ky = 0; ky < kk; ++ky) {
    const float* row = rows[ky];
    if (SAFE && !row) continue;
    __m256& a = acc[K ? ky : (ky & 1)];
    if (S == 1) {
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; ++kx) {
        const __m256 wk = K ? wv[ky * kk + kx] : _mm256_broadcast_ss(w + ky * kk + kx);
        a = _mm256_fmadd_ps(wk, load8<SAFE>(row, W, ix + kx), a);
      }
    } else {
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; kx += 2) {
        const __m256 lo8 = load8<SAFE>(row, W, ix + kx);
        const __m256 hi8 = load8<SAFE>(row, W, ix + kx + 8);
        const __m256 w0 = K ? wv[ky * kk + kx] : _mm256_broadcast_ss(w + ky * kk + kx);
        a = _mm256_fmadd_ps(w0, _mm256_shuffle_ps(lo8, hi8, 0x88), a);
        if (kx + 1 < kk) {
          const __m256 w1 =
              K ? wv[ky * kk + kx + 1] : _mm256_broadcast_ss(w + ky * kk + kx + 1);
          a = _mm256_fmadd_ps(w1, _mm256_shuffle_ps(lo8, hi8, 0xDD), a);
        }
      }
    }
  }
  _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) acc[0] = _mm256_add_ps(acc[0], acc[i]);
  if (S == 2)  // lanes hold columns [0 1 4 5 2 3 6 7]: put them in order
    acc[0] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(acc[0]), 0xD8));
  return acc[0];
}

// Two vectors of 8 outputs at the same columns of output rows oy and oy+1, from the kk + S
// input rows rows[0 ..] (all present; plain loads): each input row is loaded once for both,
// and the two independent sets of chains give the core more to overlap on small planes.
template <int K, int S>
__attribute__((always_inline)) inline void dw_chunk2(const float* const* rows, const float* w,
                                                     const __m256* wv, int k, int ix,
                                                     __m256 init, __m256& out0, __m256& out1) {
  const int kk = K ? K : k;
  constexpr int NA = K ? K : 2;
  __m256 a0[NA], a1[NA];
  a0[0] = a1[0] = init;
  _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) a0[i] = a1[i] = _mm256_setzero_ps();
  _Pragma("GCC unroll 8") for (int r = 0; r < kk + S; ++r) {
    const float* row = rows[r] + ix;
    const bool u0 = r < kk, u1 = r >= S;  // row r is kernel row r of oy, r - S of oy + 1
    const int k0 = u0 ? r : 0, k1 = u1 ? r - S : 0;
    __m256& c0 = a0[K ? k0 : (r & 1)];
    __m256& c1 = a1[K ? k1 : (r & 1)];
    // tap i's weight vector (pre-broadcast when K is known)
    auto wt = [&](int i) { return K ? wv[i] : _mm256_broadcast_ss(w + i); };
    if (S == 1) {
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; ++kx) {
        const __m256 v = _mm256_loadu_ps(row + kx);
        if (u0) c0 = _mm256_fmadd_ps(wt(k0 * kk + kx), v, c0);
        if (u1) c1 = _mm256_fmadd_ps(wt(k1 * kk + kx), v, c1);
      }
    } else {
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; kx += 2) {
        const __m256 lo8 = _mm256_loadu_ps(row + kx), hi8 = _mm256_loadu_ps(row + kx + 8);
        const __m256 ev = _mm256_shuffle_ps(lo8, hi8, 0x88);
        if (u0) c0 = _mm256_fmadd_ps(wt(k0 * kk + kx), ev, c0);
        if (u1) c1 = _mm256_fmadd_ps(wt(k1 * kk + kx), ev, c1);
        if (kx + 1 < kk) {
          const __m256 od = _mm256_shuffle_ps(lo8, hi8, 0xDD);
          if (u0) c0 = _mm256_fmadd_ps(wt(k0 * kk + kx + 1), od, c0);
          if (u1) c1 = _mm256_fmadd_ps(wt(k1 * kk + kx + 1), od, c1);
        }
      }
    }
  }
  _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) {
    a0[0] = _mm256_add_ps(a0[0], a0[i]);
    a1[0] = _mm256_add_ps(a1[0], a1[i]);
  }
  if (S == 2) {  // lanes hold columns [0 1 4 5 2 3 6 7]: put them in order
    a0[0] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(a0[0]), 0xD8));
    a1[0] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(a1[0]), 0xD8));
  }
  out0 = a0[0];
  out1 = a1[0];
}

inline float clampf(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// Floats of stack scratch for the padded-row path (64 KiB: a whole 112x112 plane fits).
constexpr int kScratch = 16384;
constexpr int kMaxK = 31;

// Input columns an 8-output chunk reads, counted from its first input column.
inline int chunk_span(int k, int S) { return S == 1 ? k + 7 : ((k - 1) & ~1) + 16; }

// Width of a padded row: pad_l zeros, the W inputs, then zeros far enough that every chunk
// (the last one starts at max(OW, 8) - 8 outputs) reads inside the row.
// Rounded up to whole vectors past pad_l + W (the copy below stores whole vectors).
inline int padded_width(const DwShape& s) {
  const int need = ((s.OW > 8 ? s.OW : 8) - 8) * s.stride + chunk_span(s.k, s.stride);
  const int have = s.pad_l + ((s.W + 7) & ~7);
  return ((have > need ? have : need) + 7) & ~7;
}

// Rows of the ring the padded path would use (0: it cannot run, use the direct path).
// Output rows go in pairs, which need k + stride input rows.
inline int ring_rows(const DwShape& s, int Wp) {
  int R = kScratch / Wp - 1;  // one row of zeros for kernel rows outside the plane
  // A few rows beyond the k + stride in use, not the whole plane: a 112x112 plane (54 KiB)
  // would evict L1.  Zen3, 3x3, all channels: 32x112x112 0.186 -> 0.172-0.177 ms, 64x112x112
  // s2 0.201 -> 0.166-0.168, 96x112x112 s2 0.297 -> 0.253, 128x56x56 0.196 -> 0.184.
  const int cap = s.k + s.stride + 4 > 8 ? s.k + s.stride + 4 : 8;
  if (R > cap) R = cap;
  if (R > s.H) R = s.H;
  return (R >= s.k + s.stride || R == s.H) ? R : 0;  // two output rows' input rows
}

// Main path: input rows are copied, zero-padded left and right, into a ring of R padded rows
// on the stack (row iy in slot iy % R), as far ahead as the ring allows (a few rows: loads
// then read rows copied an output-row pair earlier, not the stores just made).  Kernel rows outside the
// plane point at a zero row.  Then every chunk, border or not, runs on plain loads.
template <int K, int S>
void dw_plane_padded(const DwShape& s, const float* x, const float* w, float bias, float lo,
                     float hi, float* y, int Wp, int R) {
  const int kk = K ? K : s.k;
  const int H = s.H, W = s.W, OW = s.OW, pad_l = s.pad_l;
  alignas(32) float buf[kScratch];
  float* zero_row = buf + R * Wp;
  for (int i = 0; i < Wp; i += 8) _mm256_store_ps(zero_row + i, _mm256_setzero_ps());
  __m256 wv[K ? K * K : 1];
  if (K)
    for (int i = 0; i < kk * kk; ++i) wv[i] = _mm256_broadcast_ss(w + i);
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi), vb = _mm256_set1_ps(bias);
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
    for (; next_row < copy_end; ++next_row, next_slot = next_slot + 1 == R ? 0 : next_slot + 1) {
      const float* src = x + static_cast<ptrdiff_t>(next_row) * W;
      float* d = buf + next_slot * Wp;
      // Whole vectors only (Wp >= pad_l + W rounded up to 8): left zeros, right zeros, then
      // the row over them, its last vector a zero-filling masked load stored whole (a
      // masked store would make the loads that read it soon after wait for it).
      for (int i = 0; i < pad_l; i += 8) _mm256_storeu_ps(d + i, _mm256_setzero_ps());
      for (int i = (pad_l + W) & ~7; i < Wp; i += 8) _mm256_store_ps(d + i, _mm256_setzero_ps());
      float* dst = d + pad_l;
      int i = 0;
      for (; i + 8 <= W; i += 8) _mm256_storeu_ps(dst + i, _mm256_loadu_ps(src + i));
      if (i < W) _mm256_storeu_ps(dst + i, _mm256_maskload_ps(src + i, tail_mask(W - i)));
    }
    int slot = slot0;
    for (int r = 0; r < nrows; ++r, slot = slot + 1 == R ? 0 : slot + 1) {
      const int iy = iy0 + r;
      rows[r] = (iy < 0 || iy >= H) ? zero_row : buf + slot * Wp;
    }
    for (int i = 0; i < 2 * S; ++i) slot0 = slot0 + 1 == R ? 0 : slot0 + 1;
    float* y0 = y + static_cast<ptrdiff_t>(oy) * OW;
    const bool pair = oy + 1 < s.OH;
    if (OW < 8) {
      __m256 a0, a1 = vb;
      if (pair)
        dw_chunk2<K, S>(rows, w, wv, kk, 0, vb, a0, a1);
      else
        a0 = dw_chunk<K, S, false>(rows, Wp, w, wv, kk, 0, vb);
      a0 = _mm256_min_ps(vhi, _mm256_max_ps(vlo, a0));
      a1 = _mm256_min_ps(vhi, _mm256_max_ps(vlo, a1));
      // While 8 floats still fit in the plane, store them whole: the extra lanes land in the
      // next output rows, which are written after this one.  (Masked stores are slow.)
      for (int j = 0; j < (pair ? 2 : 1); ++j) {
        float* yr = y0 + j * OW;
        const __m256 a = j ? a1 : a0;
        if (static_cast<ptrdiff_t>(s.OH - oy - j) * OW >= 8)
          _mm256_storeu_ps(yr, a);
        else
          _mm256_maskstore_ps(yr, tail_mask(OW), a);
      }
      continue;
    }
    if (pair) {
      for (int ox = 0; ox < OW; ox += 8) {
        const int oxc = ox + 8 > OW ? OW - 8 : ox;
        __m256 a0, a1;
        dw_chunk2<K, S>(rows, w, wv, kk, oxc * S, vb, a0, a1);
        _mm256_storeu_ps(y0 + oxc, _mm256_min_ps(vhi, _mm256_max_ps(vlo, a0)));
        _mm256_storeu_ps(y0 + OW + oxc, _mm256_min_ps(vhi, _mm256_max_ps(vlo, a1)));
      }
    } else {
      for (int ox = 0; ox < OW; ox += 8) {
        const int oxc = ox + 8 > OW ? OW - 8 : ox;
        __m256 acc = dw_chunk<K, S, false>(rows, Wp, w, wv, kk, oxc * S, vb);
        _mm256_storeu_ps(y0 + oxc, _mm256_min_ps(vhi, _mm256_max_ps(vlo, acc)));
      }
    }
  }
}

// Fallback for rows too wide for the scratch: reads the plane directly; chunks whose loads
// would leave the row use load8_safe.
template <int K, int S>
void dw_plane_direct(const DwShape& s, const float* x, const float* w, float bias, float lo,
                     float hi, float* y) {
  const int kk = K ? K : s.k;
  const int H = s.H, W = s.W, OW = s.OW;
  const int span = chunk_span(kk, S);
  __m256 wv[K ? K * K : 1];
  if (K)
    for (int i = 0; i < kk * kk; ++i) wv[i] = _mm256_broadcast_ss(w + i);
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi), vb = _mm256_set1_ps(bias);
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
    if (!any) {  // the whole window is padding
      for (int ox = 0; ox < OW; ++ox) yr[ox] = bias_only;
      continue;
    }
    if (OW < 8) {
      __m256 acc = dw_chunk<K, S, true>(rows, W, w, wv, kk, -s.pad_l, vb);
      acc = _mm256_min_ps(vhi, _mm256_max_ps(vlo, acc));
      _mm256_maskstore_ps(yr, tail_mask(OW), acc);
      continue;
    }
    for (int ox = 0; ox < OW; ox += 8) {
      const int oxc = ox + 8 > OW ? OW - 8 : ox;
      const int ix = oxc * S - s.pad_l;
      __m256 acc;
      // plain loads need every row present too: a null row is only skipped on the SAFE path
      bool fast = ix >= 0 && ix + span <= W;
      for (int ky = 0; ky < kk && fast; ++ky) fast = rows[ky] != nullptr;
      if (fast)
        acc = dw_chunk<K, S, false>(rows, W, w, wv, kk, ix, vb);
      else
        acc = dw_chunk<K, S, true>(rows, W, w, wv, kk, ix, vb);
      acc = _mm256_min_ps(vhi, _mm256_max_ps(vlo, acc));
      _mm256_storeu_ps(yr + oxc, acc);
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

// ---- small planes, 8 channels per vector ------------------------------------------------
// As in dwconv_avx512.cpp: per group of 8 channels the input planes are transposed (8x8
// blocks in registers) into a zero-padded tile T[ty][tx][8 channels], outputs are computed
// 8 pixels at a time (8 independent accumulators, one weight vector per tap) and transposed
// back.  Used while the tile fits kTileVecs vectors (32 KiB).
constexpr int kTileVecs = 1024;
constexpr int kMultiMaxTaps = 49;

__attribute__((always_inline)) inline void transpose8(__m256* r) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3 (h = 0) and 4-7 (h = 1)
    const int b = 4 * h;
    u[b + 0] = _mm256_shuffle_ps(t[b + 0], t[b + 2], 0x44);  // columns 0 | 4
    u[b + 1] = _mm256_shuffle_ps(t[b + 0], t[b + 2], 0xEE);  // columns 1 | 5
    u[b + 2] = _mm256_shuffle_ps(t[b + 1], t[b + 3], 0x44);  // columns 2 | 6
    u[b + 3] = _mm256_shuffle_ps(t[b + 1], t[b + 3], 0xEE);  // columns 3 | 7
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    r[c + 4] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}

inline int tile_extent(int O, int S, int k) { return (O - 1) * S + k; }

bool multi_fits(const DwShape& s) {
  if (s.k * s.k > kMultiMaxTaps || s.stride < 1) return false;
  const long th = tile_extent(s.OH, s.stride, s.k), tw = tile_extent(s.OW, s.stride, s.k);
  // Measured on Zen3 (3x3, all channels in one call) against the row kernel plane by plane:
  // 512x14x14 0.061 vs 0.139 ms, 1024x7x7 0.041 vs 0.075, 256x28x28 s2 0.052 vs 0.072,
  // 256x28x28 s1 0.111 vs 0.130.
  return th * tw <= kTileVecs && static_cast<long>(s.H) * s.W <= kTileVecs;
}

void dw_multi8(const DwShape& s, int nch, const float* x, const float* w, const float* bias,
               float lo, float hi, float* y) {
  const int H = s.H, W = s.W, OH = s.OH, OW = s.OW, k = s.k, S = s.stride, kk = k * k;
  const int TH = tile_extent(OH, S, k), TW = tile_extent(OW, S, k);
  const int HW = H * W, OHW = OH * OW;
  alignas(32) float tile[kTileVecs * 8];
  __m256* T = reinterpret_cast<__m256*>(tile);
  for (int i = 0; i < TH * TW; ++i) T[i] = _mm256_setzero_ps();  // borders stay zero
  int in_at[kTileVecs], out_at[kTileVecs + 8];
  int n_in = 0;
  for (int iy = 0; iy < H; ++iy)
    for (int ix = 0; ix < W; ++ix, ++n_in) {
      const int ty = iy + s.pad_t, tx = ix + s.pad_l;
      in_at[n_in] = (ty < TH && tx < TW) ? ty * TW + tx : -1;
    }
  const int OHWp = (OHW + 7) & ~7;
  for (int p = 0; p < OHWp; ++p)
    out_at[p] = p < OHW ? (p / OW) * S * TW + (p % OW) * S : 0;
  int tap_at[kMultiMaxTaps];
  for (int ky = 0; ky < k; ++ky)
    for (int kx = 0; kx < k; ++kx) tap_at[ky * k + kx] = ky * TW + kx;
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  for (int c0 = 0; c0 < nch; c0 += 8) {
    const int cnt = nch - c0 < 8 ? nch - c0 : 8;
    __m256 wt[kMultiMaxTaps];
    alignas(32) float lane[8];
    for (int t = 0; t < kk; ++t) {
      for (int c = 0; c < 8; ++c)
        lane[c] = c < cnt ? w[static_cast<ptrdiff_t>(c0 + c) * kk + t] : 0.0f;
      wt[t] = _mm256_load_ps(lane);
    }
    for (int c = 0; c < 8; ++c) lane[c] = c < cnt ? bias[c0 + c] : 0.0f;
    const __m256 vb = _mm256_load_ps(lane);
    const float* xc = x + static_cast<ptrdiff_t>(c0) * HW;
    float* yc = y + static_cast<ptrdiff_t>(c0) * OHW;
    for (int p0 = 0; p0 < HW; p0 += 8) {
      const int np = HW - p0 < 8 ? HW - p0 : 8;
      const __m256i pm = tail_mask(np);
      __m256 r[8];
      _Pragma("GCC unroll 8") for (int c = 0; c < 8; ++c)
        r[c] = c < cnt ? _mm256_maskload_ps(xc + static_cast<ptrdiff_t>(c) * HW + p0, pm)
                       : _mm256_setzero_ps();
      transpose8(r);
      for (int j = 0; j < np; ++j) {
        const int at = in_at[p0 + j];
        if (at >= 0) T[at] = r[j];
      }
    }
    for (int p0 = 0; p0 < OHW; p0 += 8) {
      __m256 acc[8];
      const int* oa = out_at + p0;
      _Pragma("GCC unroll 8") for (int j = 0; j < 8; ++j) acc[j] = vb;
      for (int t = 0; t < kk; ++t) {
        const __m256 wv = wt[t];
        const __m256* Tt = T + tap_at[t];
        _Pragma("GCC unroll 8") for (int j = 0; j < 8; ++j)
          acc[j] = _mm256_fmadd_ps(wv, Tt[oa[j]], acc[j]);
      }
      _Pragma("GCC unroll 8") for (int j = 0; j < 8; ++j)
        acc[j] = _mm256_min_ps(vhi, _mm256_max_ps(vlo, acc[j]));
      transpose8(acc);
      const int np = OHW - p0 < 8 ? OHW - p0 : 8;
      if (np == 8) {
        for (int c = 0; c < cnt; ++c)
          _mm256_storeu_ps(yc + static_cast<ptrdiff_t>(c) * OHW + p0, acc[c]);
      } else {
        const __m256i pm = tail_mask(np);
        for (int c = 0; c < cnt; ++c)
          _mm256_maskstore_ps(yc + static_cast<ptrdiff_t>(c) * OHW + p0, pm, acc[c]);
      }
    }
  }
}

}  // namespace

void dwconv_multi_avx2(const DwShape& s, int nch, const float* x, const float* w,
                       const float* bias, float lo, float hi, float* y) {
  if (nch <= 0) return;
  if (multi_fits(s)) return dw_multi8(s, nch, x, w, bias, lo, hi, y);
  const ptrdiff_t plane = static_cast<ptrdiff_t>(s.H) * s.W;
  const ptrdiff_t oplane = static_cast<ptrdiff_t>(s.OH) * s.OW;
  for (int c = 0; c < nch; ++c)
    dwconv_avx2(s, x + c * plane, w + static_cast<ptrdiff_t>(c) * s.k * s.k, bias[c], lo, hi,
                y + c * oplane);
}

void dwconv_avx2(const DwShape& s, const float* x, const float* w, float bias, float lo,
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
