// aarch64 NEON ReLU-output prediction (kernels.h, QuantizeFn and PredictFn), compiled with
// -ffp-contract=off like every predict_*.cpp (the quantization rounds the product and the sum
// separately, as the reference does).
//
// predict_quantize_neon: baseline Advanced SIMD, 16 channels per step (4 x fmul, fadd, clamp,
//   fcvtzu, two narrowing moves); a ragged end goes through a 16-float stack buffer, so every
//   value takes the same vector path and nothing past x or xq is touched.  Channel counts that
//   are not a multiple of 4 are quantized in chunks of contiguous pixels into a stack buffer and
//   then spread to the C4-byte rows.
//
// predict_neon: the integer prediction uses the Armv8.2 dot product (SDOT, vdotq_laneq_s32).
//   The activations are 0..127, so they are valid int8 and sdot's int8 x int8 -> int32 sums are
//   exact: no int16 stage (PredictMat::steps16 is not used).  The packed weights
//   [M/8][K4/4][8 rows][4 k] are already sdot's layout: the 32 bytes of one step of 4 k are two
//   q registers, lane i holding row i's 4 k (rows 0..3, then rows 4..7).  Tile: 16 rows (two
//   blocks, four int32x4 accumulators per pixel) x 4 pixels; each pixel's activations are
//   loaded 16 bytes (4 steps) at a time and each step picks its 4 bytes by lane index.  The
//   whole tile is predicted first (positives marked in one uint64 per output row), then every
//   row's positive pixels are computed in fp32 four at a time (vfmaq_f32 over each tap's
//   channels, the weight row loaded once per four pixels).
//   The SDOT code is compiled for armv8.2-a+dotprod (function attribute; the rest of the file
//   stays baseline Armv8) and chosen at run time only when the CPU has it (Linux: HWCAP_ASIMDDP);
//   otherwise predict_neon calls predict_ref.
#include <arm_neon.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif

#include "kernels/predict_taps.h"

#if defined(__clang__)
#define SK_DOTPROD __attribute__((target("dotprod")))
#else
// GCC's arm_neon.h defines the dot-product intrinsics for arch=armv8.2-a+dotprod; a caller
// must enable at least as much to inline them.
#define SK_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif

namespace sk {
namespace {

// Keeps the product a separate, rounded fmul: without this a compiler allowed to contract
// (-ffp-contract=fast, GCC's default for C++) could fuse the vmulq_f32 and the vaddq_f32 below
// into one fmla and change the rounding.  Emits no instruction.
inline float32x4_t rounded(float32x4_t v) {
  __asm__("" : "+w"(v));
  return v;
}

// 16 values quantized as kernels.h defines: clamp(x * inv + off, 0, 127) truncated.
inline uint8x16_t quantize16(const float* f, float32x4_t vi, float32x4_t vo) {
  const float32x4_t lo = vdupq_n_f32(0.0f), top = vdupq_n_f32(127.0f);
  uint16x4_t h[4];
  for (int j = 0; j < 4; ++j) {
    float32x4_t t = rounded(vmulq_f32(vld1q_f32(f + 4 * j), vi));
    t = vaddq_f32(t, vo);
    t = vminq_f32(vmaxq_f32(t, lo), top);
    h[j] = vmovn_u32(vcvtq_u32_f32(t));  // t in [0, 127]: truncation is floor
  }
  return vcombine_u8(vmovn_u16(vcombine_u16(h[0], h[1])), vmovn_u16(vcombine_u16(h[2], h[3])));
}

// len contiguous values into len bytes.
void quantize_run(const float* f, size_t len, float32x4_t vi, float32x4_t vo, uint8_t* q) {
  size_t i = 0;
  for (; i + 16 <= len; i += 16) vst1q_u8(q + i, quantize16(f + i, vi, vo));
  if (i < len) {
    float buf[16] = {0.0f};
    uint8_t out[16];
    std::memcpy(buf, f + i, (len - i) * sizeof(float));
    vst1q_u8(out, quantize16(buf, vi, vo));
    std::memcpy(q + i, out, len - i);
  }
}

}  // namespace

void predict_quantize_neon(const float* x, size_t n, int C, int C4, float sx, int zx,
                           uint8_t* xq) {
  const float inv = sx > 0.0f ? 1.0f / sx : 0.0f, off = float(zx) + 0.5f;
  const float32x4_t vi = vdupq_n_f32(inv), vo = vdupq_n_f32(off);
  if (C == C4) {  // no padding channels: one contiguous run
    quantize_run(x, n * size_t(C), vi, vo, xq);
    return;
  }
  if (C >= 16) {  // pixel by pixel
    for (size_t p = 0; p < n; ++p) {
      quantize_run(x + p * C, size_t(C), vi, vo, xq + p * C4);
      for (int c = C; c < C4; ++c) xq[p * C4 + c] = 0;
    }
    return;
  }
  // few channels: chunks of pixels quantized contiguously, then spread to C4-byte rows
  uint8_t tmp[1024];
  const size_t chunk = sizeof tmp / size_t(C);
  for (size_t p0 = 0; p0 < n; p0 += chunk) {
    const size_t np = std::min(chunk, n - p0);
    quantize_run(x + p0 * C, np * size_t(C), vi, vo, tmp);
    for (size_t i = 0; i < np; ++i) {
      uint8_t* q = xq + (p0 + i) * C4;
      std::memcpy(q, tmp + i * C, size_t(C));
      for (int c = C; c < C4; ++c) q[c] = 0;
    }
  }
}

namespace {

constexpr int kPixels = 4;  // pixels per prediction tile

bool cpu_has_dotprod() {
#if defined(__linux__)
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
  return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
  int v = 0;
  size_t len = sizeof v;
  return sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &len, nullptr, 0) == 0 && v != 0;
#elif defined(__ARM_FEATURE_DOTPROD)
  return true;
#else
  return false;
#endif
}

// One step (4 k) of V blocks' weights at wk (block stride vs bytes) against lane S of each
// pixel's 16 activation bytes.
template <int V, int R, int S>
SK_DOTPROD inline void dot_step(const int8_t* wk, ptrdiff_t vs, const int8x16_t (&xv)[R],
                                int32x4_t (&acc)[V][2][R]) {
  for (int v = 0; v < V; ++v) {
    const int8x16_t w0 = vld1q_s8(wk + v * vs + S * 32), w1 = vld1q_s8(wk + v * vs + S * 32 + 16);
    for (int r = 0; r < R; ++r) {
      acc[v][0][r] = vdotq_laneq_s32(acc[v][0][r], w0, xv[r], S);
      acc[v][1][r] = vdotq_laneq_s32(acc[v][1][r], w1, xv[r], S);
    }
  }
}

// Integer predictions of V blocks of 8 rows (from block b) for R pixels: acc[v][h][r] lane i
// is sum_k wq[8(b+v) + 4h + i][k] * xq[r][k].
template <int V, int R>
SK_DOTPROD inline void predict_tile(const PredictMat& w, int b, const uint8_t* xq,
                                    int32x4_t (&acc)[V][2][R]) {
  const int nk = w.K4 / 4;
  const ptrdiff_t vs = static_cast<ptrdiff_t>(w.K4) * 8;
  const int8_t* wb = w.wq + b * vs;
  for (int v = 0; v < V; ++v)
    for (int r = 0; r < R; ++r) acc[v][0][r] = acc[v][1][r] = vdupq_n_s32(0);
  int k = 0;
  for (; k + 4 <= nk; k += 4) {
    int8x16_t xv[R];
    for (int r = 0; r < R; ++r)
      xv[r] = vreinterpretq_s8_u8(vld1q_u8(xq + static_cast<ptrdiff_t>(r) * w.K4 + 4 * k));
    const int8_t* wk = wb + static_cast<ptrdiff_t>(k) * 32;
    dot_step<V, R, 0>(wk, vs, xv, acc);
    dot_step<V, R, 1>(wk, vs, xv, acc);
    dot_step<V, R, 2>(wk, vs, xv, acc);
    dot_step<V, R, 3>(wk, vs, xv, acc);
  }
  for (; k < nk; ++k) {  // the last 1..3 steps: each pixel's 4 bytes broadcast
    int8x16_t xv[R];
    for (int r = 0; r < R; ++r) {
      uint32_t xb;
      std::memcpy(&xb, xq + static_cast<ptrdiff_t>(r) * w.K4 + 4 * k, 4);
      xv[r] = vreinterpretq_s8_u32(vdupq_n_u32(xb));
    }
    dot_step<V, R, 0>(wb + static_cast<ptrdiff_t>(k) * 32, vs, xv, acc);
  }
}

// Marks pixel p in positive[m] for the rows of block b + v predicted positive:
// fma(float(acc - shift), scale, bias) > 0, one rounding as in the reference.
template <int V>
inline void mark(const DecisionRows<V>& d, int v, const int32x4_t (&acc)[2], int b, int p,
                 uint64_t* positive) {
  const uint32x4_t bit = {1, 2, 4, 8};
  unsigned mask = 0;
  for (int h = 0; h < 2; ++h) {
    const int at = 8 * v + 4 * h;
    const int32x4_t a = vsubq_s32(acc[h], vld1q_s32(d.shift + at));
    const float32x4_t pred =
        vfmaq_f32(vld1q_f32(d.bias + at), vcvtq_f32_s32(a), vld1q_f32(d.scale + at));
    const uint32x4_t gt = vcgtq_f32(pred, vdupq_n_f32(0.0f));
    mask |= vaddvq_u32(vandq_u32(gt, bit)) << (4 * h);
  }
  mask &= d.live[v];
  while (mask) {
    positive[8 * (b + v) + __builtin_ctz(mask)] |= uint64_t(1) << p;
    mask &= mask - 1;
  }
}

template <int V, int R>
SK_DOTPROD inline void predict_pixels(const PredictMat& w, int b, const DecisionRows<V>& d,
                                      const uint8_t* xq, int p, uint64_t* positive) {
  int32x4_t acc[V][2][R];
  predict_tile<V, R>(w, b, xq + static_cast<ptrdiff_t>(p) * w.K4, acc);
  for (int v = 0; v < V; ++v)
    for (int r = 0; r < R; ++r) {
      const int32x4_t a[2] = {acc[v][0][r], acc[v][1][r]};
      mark(d, v, a, b, p + r, positive);
    }
}

// Predictions of blocks [b, b+V) for all n pixels, marked in positive[m].
template <int V>
SK_DOTPROD void predict_blocks(const PredictMat& w, int b, int n, float sx, int zx,
                               const uint8_t* xq, uint64_t* positive) {
  const DecisionRows<V> d(w, b, sx, zx);
  int p = 0;
  for (; p + kPixels <= n; p += kPixels) predict_pixels<V, kPixels>(w, b, d, xq, p, positive);
  switch (n - p) {
    case 3: predict_pixels<V, 3>(w, b, d, xq, p, positive); break;
    case 2: predict_pixels<V, 2>(w, b, d, xq, p, positive); break;
    case 1: predict_pixels<V, 1>(w, b, d, xq, p, positive); break;
    default: break;
  }
}

// Dot products of N pixels' taps with weight row wr ([taps][C]), in the low N lanes (the
// others 0): pixel j's tap t is runs[pix[j] * taps + t], C floats.
template <int N>
inline float32x4_t dot_taps(const float* const* runs, const int* pix, const float* wr, int taps,
                            int C) {
  float32x4_t s0[4], s1[4];
  float tail[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int j = 0; j < 4; ++j) s0[j] = s1[j] = vdupq_n_f32(0.0f);
  for (int t = 0; t < taps; ++t, wr += C) {
    const float* a[N];
    for (int j = 0; j < N; ++j) a[j] = runs[static_cast<ptrdiff_t>(pix[j]) * taps + t];
    int c = 0;
    for (; c + 8 <= C; c += 8) {
      const float32x4_t w0 = vld1q_f32(wr + c), w1 = vld1q_f32(wr + c + 4);
      for (int j = 0; j < N; ++j) {
        s0[j] = vfmaq_f32(s0[j], vld1q_f32(a[j] + c), w0);
        s1[j] = vfmaq_f32(s1[j], vld1q_f32(a[j] + c + 4), w1);
      }
    }
    if (c + 4 <= C) {
      const float32x4_t w0 = vld1q_f32(wr + c);
      for (int j = 0; j < N; ++j) s0[j] = vfmaq_f32(s0[j], vld1q_f32(a[j] + c), w0);
      c += 4;
    }
    for (; c < C; ++c)  // the last 1..3 channels (no lane past the tap's C floats is read)
      for (int j = 0; j < N; ++j) tail[j] = std::fma(wr[c], a[j][c], tail[j]);
  }
  for (int j = 0; j < 4; ++j) s0[j] = vaddq_f32(s0[j], s1[j]);
  const float32x4_t sum =
      vpaddq_f32(vpaddq_f32(s0[0], s0[1]), vpaddq_f32(s0[2], s0[3]));  // lane j: pixel j
  return vaddq_f32(sum, vld1q_f32(tail));
}

// Full precision for row m at the pixels marked in `bits` (runs: each pixel's runs), four
// pixels sharing each load of the weight row; written to y[p] (row m's outputs).
void exact_row(const PredictMat& w, int m, uint64_t bits, const float* const* runs, float* y) {
  const float* wr = w.w + static_cast<ptrdiff_t>(m) * w.taps * w.C;
  const float32x4_t zero = vdupq_n_f32(0.0f), hi = vdupq_n_f32(w.hi),
                    bias = vdupq_n_f32(w.bias[m]);
  while (bits) {
    int pix[4], c = 0;
    for (; c < 4 && bits; ++c) {
      pix[c] = __builtin_ctzll(bits);
      bits &= bits - 1;
    }
    const float32x4_t v = c == 4   ? dot_taps<4>(runs, pix, wr, w.runs, w.run_len)
                          : c == 3 ? dot_taps<3>(runs, pix, wr, w.runs, w.run_len)
                          : c == 2 ? dot_taps<2>(runs, pix, wr, w.runs, w.run_len)
                                   : dot_taps<1>(runs, pix, wr, w.runs, w.run_len);
    float out[4];
    vst1q_f32(out, vminq_f32(vmaxq_f32(vaddq_f32(v, bias), zero), hi));
    for (int j = 0; j < c; ++j) y[pix[j]] = out[j];
  }
}

SK_DOTPROD int64_t predict_dotprod(const PredictMat& w, const PredictImage& img, int64_t p0,
                                   int n, uint8_t* scratch, float* y, ptrdiff_t y_stride) {
  // Whole tile predicted first, then each row's positives computed together.
  return predict_tile_rows(
      w, img, p0, n, scratch, y, y_stride,
      [&](const uint8_t* xq, uint64_t* pos) {
        const int nb = (w.M + 7) / 8;
        for (int b = 0; b < nb; b += 2) {
          if (b + 1 < nb)
            predict_blocks<2>(w, b, n, img.sx, img.zx, xq, pos);
          else
            predict_blocks<1>(w, b, n, img.sx, img.zx, xq, pos);
        }
      },
      [&](int m, uint64_t bits, const float* const* runs, float* ym) {
        exact_row(w, m, bits, runs, ym);
      });
}

}  // namespace

int64_t predict_neon(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                     uint8_t* scratch, float* y, ptrdiff_t y_stride) {
  static const bool dotprod = cpu_has_dotprod();
  if (!dotprod) return predict_ref(w, img, p0, n, scratch, y, y_stride);
  return predict_dotprod(w, img, p0, n, scratch, y, y_stride);
}

}  // namespace sk
