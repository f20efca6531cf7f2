// AVX-512 bank-balanced matrix-vector product (kernels.h, BankMat): 16 rows interleaved, one
// row per lane, so every lane does the same work.  Per bank, the bank's slice of x is loaded
// into 1, 2 or 4 zmm registers once per row group; each step gathers one x value per lane
// inside registers:
//   bank <= 16: vpermps (permutexvar) on one register
//   bank <= 32: vpermt2ps (permutex2var) on two
//   bank <= 64: two vpermt2ps and a blend on bit 5 of the offset
//   bank > 64:  vgatherdps from memory (fine on Intel, slow on Zen; the packer's default
//               bank for LSTM weights is 16)
// One-byte offsets are widened with vpmovzxbd.  Four accumulators hide the FMA latency.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/x86_intrinsics.h"

#include "kernels/isa_parts.h"
#include "kernels/kernels.h"

namespace sk {
namespace {

template <int NX>
__attribute__((always_inline)) inline __m512 pick(const __m512* xr, __m512i id, const float* xb) {
  if (NX == 1) return _mm512_permutexvar_ps(id, xr[0]);
  if (NX == 2) return _mm512_permutex2var_ps(xr[0], id, xr[1]);
  if (NX == 4) {
    const __mmask16 hi = _mm512_test_epi32_mask(id, _mm512_set1_epi32(32));
    const __m512 a = _mm512_permutex2var_ps(xr[0], id, xr[1]);
    const __m512 b = _mm512_permutex2var_ps(xr[2], id, xr[3]);
    return _mm512_mask_blend_ps(hi, a, b);
  }
  return _mm512_i32gather_ps(id, xb, 4);
}

template <int NX>
__attribute__((always_inline)) inline __m512 step(const float* v, const uint8_t* o,
                                                  const __m512* xr, const float* xb, __m512 acc) {
  const __m512i id = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(o)));
  return _mm512_fmadd_ps(_mm512_loadu_ps(v), pick<NX>(xr, id, xb), acc);
}

template <int NX>
void spmv_groups(const BankMat& w, int g_begin, int g_end, const float* x, const float* init,
                 float* y) {
  const int nb = w.nbanks, keep = w.keep, bs = w.bank_size;
  const size_t per_group = size_t(nb) * keep * 16;
  for (int g = g_begin; g < g_end; ++g) {
    const float* v = w.values + g * per_group;
    const uint8_t* o = w.offs + g * per_group;
    const int r0 = g * 16;
    const int nr = w.rows - r0 < 16 ? w.rows - r0 : 16;
    const __mmask16 m = static_cast<__mmask16>((1u << nr) - 1u);
    __m512 a0 = init ? _mm512_maskz_loadu_ps(m, init + r0) : _mm512_setzero_ps();
    __m512 a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
      const float* xb = x + size_t(b) * bs;
      __m512 xr[4];
      if (NX >= 1) xr[0] = _mm512_loadu_ps(xb);
      if (NX >= 2) xr[1] = _mm512_loadu_ps(xb + 16);
      if (NX >= 4) {
        xr[2] = _mm512_loadu_ps(xb + 32);
        xr[3] = _mm512_loadu_ps(xb + 48);
      }
      int q = 0;
      for (; q + 4 <= keep; q += 4, v += 64, o += 64) {
        a0 = step<NX>(v, o, xr, xb, a0);
        a1 = step<NX>(v + 16, o + 16, xr, xb, a1);
        a2 = step<NX>(v + 32, o + 32, xr, xb, a2);
        a3 = step<NX>(v + 48, o + 48, xr, xb, a3);
      }
      for (; q < keep; ++q, v += 16, o += 16) a0 = step<NX>(v, o, xr, xb, a0);
    }
    const __m512 acc = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    _mm512_mask_storeu_ps(y + r0, m, acc);
  }
}

}  // namespace

void spmv_bank_avx512(const BankMat& w, int g_begin, int g_end, const float* x,
                      const float* init, float* y) {
  if (w.bank_size <= 16)
    spmv_groups<1>(w, g_begin, g_end, x, init, y);
  else if (w.bank_size <= 32)
    spmv_groups<2>(w, g_begin, g_end, x, init, y);
  else if (w.bank_size <= 64)
    spmv_groups<4>(w, g_begin, g_end, x, init, y);
  else
    spmv_groups<0>(w, g_begin, g_end, x, init, y);
}

}  // namespace sk
