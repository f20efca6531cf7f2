// aarch64 NEON depthwise convolution of one channel plane.
//
// The structure of the x86 kernels (see dwconv_avx2.cpp) with 4 output columns per vector:
// input rows copied zero-padded into a ring in a 64 KiB stack scratch, two output rows per
// pass, taps unrolled for k = 3 and 5 (run-time k otherwise), stride >= 3 (or k > 31) scalar.
// Stride 2 uses vld2q_f32, which loads 8 consecutive inputs already split into even and odd
// columns.  Rows too wide for the scratch are read in place, border chunks through a
// zero-filled 4-float stack buffer; no read ever leaves the H*W input.  No alignment assumed.
#include <arm_neon.h>

#include "kernels/isa_parts.h"
#include "kernels/kernels.h"

namespace sk {
namespace {

// row[i0 .. i0+4) with positions outside [0, W) as zero, reading only row[0 .. W).
inline float32x4_t load4_safe(const float* row, int W, int i0) {
  if (i0 >= 0 && i0 + 4 <= W) return vld1q_f32(row + i0);
  float t[4];
  for (int i = 0; i < 4; ++i) t[i] = (i0 + i >= 0 && i0 + i < W) ? row[i0 + i] : 0.0f;
  return vld1q_f32(t);
}

// Even and odd columns of row[i0 .. i0+8), zero outside [0, W).
inline float32x4x2_t load8x2_safe(const float* row, int W, int i0) {
  if (i0 >= 0 && i0 + 8 <= W) return vld2q_f32(row + i0);
  float t[8];
  for (int i = 0; i < 8; ++i) t[i] = (i0 + i >= 0 && i0 + i < W) ? row[i0 + i] : 0.0f;
  return vld2q_f32(t);
}

template <bool SAFE>
inline float32x4_t load4(const float* row, int W, int i0) {
  return SAFE ? load4_safe(row, W, i0) : vld1q_f32(row + i0);
}
template <bool SAFE>
inline float32x4x2_t load8x2(const float* row, int W, int i0) {
  return SAFE ? load8x2_safe(row, W, i0) : vld2q_f32(row + i0);
}

// One vector of 4 outputs; rows[ky] null = outside the plane (SAFE path only).
template <int K, int S, bool SAFE>
__attribute__((always_inline)) inline float32x4_t dw_chunk(const float* const* rows, int W,
                                                           const float* w, int k, int ix,
                                                           float32x4_t init) {
  const int kk = K ? K : k;
  constexpr int NA = K ? K : 2;
  float32x4_t acc[NA];
  acc[0] = init;
  _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) acc[i] = vdupq_n_f32(0.0f);
  _Pragma("GCC unroll 8") for (int ky = 0; ky < kk; ++ky) {
    const float* row = rows[ky];
    if (SAFE && !row) continue;
    float32x4_t& a = acc[K ? ky : (ky & 1)];
    const float* wr = w + ky * kk;
    if (S == 1) {
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; ++kx)
        a = vfmaq_n_f32(a, load4<SAFE>(row, W, ix + kx), wr[kx]);
    } else {
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; kx += 2) {
        const float32x4x2_t eo = load8x2<SAFE>(row, W, ix + kx);
        a = vfmaq_n_f32(a, eo.val[0], wr[kx]);
        if (kx + 1 < kk) a = vfmaq_n_f32(a, eo.val[1], wr[kx + 1]);
      }
    }
  }
  _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) acc[0] = vaddq_f32(acc[0], acc[i]);
  return acc[0];
}

// Output rows oy and oy+1 at the same 4 columns from padded input rows rows[0 .. kk+S).
template <int K, int S>
__attribute__((always_inline)) inline void dw_chunk2(const float* const* rows, const float* w,
                                                     int k, int ix, float32x4_t init,
                                                     float32x4_t& out0, float32x4_t& out1) {
  const int kk = K ? K : k;
  constexpr int NA = K ? K : 2;
  float32x4_t a0[NA], a1[NA];
  a0[0] = a1[0] = init;
  _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) a0[i] = a1[i] = vdupq_n_f32(0.0f);
  _Pragma("GCC unroll 8") for (int r = 0; r < kk + S; ++r) {
    const float* row = rows[r] + ix;
    const bool u0 = r < kk, u1 = r >= S;  // row r is kernel row r of oy, r - S of oy + 1
    const float* w0 = w + (u0 ? r : 0) * kk;
    const float* w1 = w + (u1 ? r - S : 0) * kk;
    float32x4_t& c0 = a0[K ? (u0 ? r : 0) : (r & 1)];
    float32x4_t& c1 = a1[K ? (u1 ? r - S : 0) : (r & 1)];
    if (S == 1) {
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; ++kx) {
        const float32x4_t v = vld1q_f32(row + kx);
        if (u0) c0 = vfmaq_n_f32(c0, v, w0[kx]);
        if (u1) c1 = vfmaq_n_f32(c1, v, w1[kx]);
      }
    } else {
      _Pragma("GCC unroll 8") for (int kx = 0; kx < kk; kx += 2) {
        const float32x4x2_t eo = vld2q_f32(row + kx);
        if (u0) c0 = vfmaq_n_f32(c0, eo.val[0], w0[kx]);
        if (u1) c1 = vfmaq_n_f32(c1, eo.val[0], w1[kx]);
        if (kx + 1 < kk) {
          if (u0) c0 = vfmaq_n_f32(c0, eo.val[1], w0[kx + 1]);
          if (u1) c1 = vfmaq_n_f32(c1, eo.val[1], w1[kx + 1]);
        }
      }
    }
  }
  _Pragma("GCC unroll 8") for (int i = 1; i < NA; ++i) {
    a0[0] = vaddq_f32(a0[0], a0[i]);
    a1[0] = vaddq_f32(a1[0], a1[i]);
  }
  out0 = a0[0];
  out1 = a1[0];
}

inline float clampf(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

inline float32x4_t clamp4(float32x4_t v, float32x4_t lo, float32x4_t hi) {
  return vminq_f32(hi, vmaxq_f32(lo, v));
}

// The first m (< 4) lanes of v to p.
inline void store_part(float* p, float32x4_t v, int m) {
  float t[4];
  vst1q_f32(t, v);
  for (int i = 0; i < m; ++i) p[i] = t[i];
}

constexpr int kScratch = 16384;  // floats of stack scratch (64 KiB)
constexpr int kMaxK = 31;

// Input columns a 4-output chunk reads, counted from its first input column.
inline int chunk_span(int k, int S) { return S == 1 ? k + 3 : ((k - 1) & ~1) + 8; }

inline int padded_width(const DwShape& s) {
  const int need = ((s.OW > 4 ? s.OW : 4) - 4) * s.stride + chunk_span(s.k, s.stride);
  const int have = s.pad_l + ((s.W + 3) & ~3);
  return ((have > need ? have : need) + 3) & ~3;
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
  // a local copy of the taps: stores to y cannot alias it, so they stay in registers
  float wl[K ? K * K : 1];
  if (K)
    for (int i = 0; i < kk * kk; ++i) wl[i] = w[i];
  const float* wk = K ? wl : w;
  const int H = s.H, W = s.W, OW = s.OW, pad_l = s.pad_l;
  alignas(16) float buf[kScratch];
  const float32x4_t zero = vdupq_n_f32(0.0f);
  float* zero_row = buf + R * Wp;
  for (int i = 0; i < Wp; i += 4) vst1q_f32(zero_row + i, zero);
  const float32x4_t vlo = vdupq_n_f32(lo), vhi = vdupq_n_f32(hi), vb = vdupq_n_f32(bias);
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
      for (int i = 0; i < pad_l; i += 4) vst1q_f32(d + i, zero);
      for (int i = (pad_l + W) & ~3; i < Wp; i += 4) vst1q_f32(d + i, zero);
      float* dst = d + pad_l;
      int i = 0;
      for (; i + 4 <= W; i += 4) vst1q_f32(dst + i, vld1q_f32(src + i));
      for (; i < W; ++i) dst[i] = src[i];
    }
    int slot = slot0;
    for (int r = 0; r < nrows; ++r, slot = slot + 1 == R ? 0 : slot + 1) {
      const int iy = iy0 + r;
      rows[r] = (iy < 0 || iy >= H) ? zero_row : buf + slot * Wp;
    }
    for (int i = 0; i < 2 * S; ++i) slot0 = slot0 + 1 == R ? 0 : slot0 + 1;
    float* y0 = y + static_cast<ptrdiff_t>(oy) * OW;
    const bool pair = oy + 1 < s.OH;
    if (OW < 4) {
      float32x4_t a0, a1 = vb;
      if (pair)
        dw_chunk2<K, S>(rows, wk, kk, 0, vb, a0, a1);
      else
        a0 = dw_chunk<K, S, false>(rows, Wp, wk, kk, 0, vb);
      store_part(y0, clamp4(a0, vlo, vhi), OW);
      if (pair) store_part(y0 + OW, clamp4(a1, vlo, vhi), OW);
      continue;
    }
    if (pair) {
      for (int ox = 0; ox < OW; ox += 4) {
        const int oxc = ox + 4 > OW ? OW - 4 : ox;
        float32x4_t a0, a1;
        dw_chunk2<K, S>(rows, wk, kk, oxc * S, vb, a0, a1);
        vst1q_f32(y0 + oxc, clamp4(a0, vlo, vhi));
        vst1q_f32(y0 + OW + oxc, clamp4(a1, vlo, vhi));
      }
    } else {
      for (int ox = 0; ox < OW; ox += 4) {
        const int oxc = ox + 4 > OW ? OW - 4 : ox;
        vst1q_f32(y0 + oxc, clamp4(dw_chunk<K, S, false>(rows, Wp, wk, kk, oxc * S, vb), vlo, vhi));
      }
    }
  }
}

template <int K, int S>
void dw_plane_direct(const DwShape& s, const float* x, const float* w, float bias, float lo,
                     float hi, float* y) {
  const int kk = K ? K : s.k;
  // a local copy of the taps: stores to y cannot alias it, so they stay in registers
  float wl[K ? K * K : 1];
  if (K)
    for (int i = 0; i < kk * kk; ++i) wl[i] = w[i];
  const float* wk = K ? wl : w;
  const int H = s.H, W = s.W, OW = s.OW;
  const int span = chunk_span(kk, S);
  const float32x4_t vlo = vdupq_n_f32(lo), vhi = vdupq_n_f32(hi), vb = vdupq_n_f32(bias);
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
    if (OW < 4) {
      store_part(yr, clamp4(dw_chunk<K, S, true>(rows, W, wk, kk, -s.pad_l, vb), vlo, vhi), OW);
      continue;
    }
    for (int ox = 0; ox < OW; ox += 4) {
      const int oxc = ox + 4 > OW ? OW - 4 : ox;
      const int ix = oxc * S - s.pad_l;
      bool fast = ix >= 0 && ix + span <= W;
      for (int ky = 0; ky < kk && fast; ++ky) fast = rows[ky] != nullptr;
      const float32x4_t acc = fast ? dw_chunk<K, S, false>(rows, W, wk, kk, ix, vb)
                                   : dw_chunk<K, S, true>(rows, W, wk, kk, ix, vb);
      vst1q_f32(yr + oxc, clamp4(acc, vlo, vhi));
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

}  // namespace

void dwconv_neon(const DwShape& s, const float* x, const float* w, float bias, float lo,
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

void dwconv_multi_neon(const DwShape& s, int nch, const float* x, const float* w,
                       const float* bias, float lo, float hi, float* y) {
  const ptrdiff_t plane = static_cast<ptrdiff_t>(s.H) * s.W;
  const ptrdiff_t oplane = static_cast<ptrdiff_t>(s.OH) * s.OW;
  for (int c = 0; c < nch; ++c)
    dwconv_neon(s, x + c * plane, w + static_cast<ptrdiff_t>(c) * s.k * s.k, bias[c], lo, hi,
              y + c * oplane);
}

}  // namespace sk
