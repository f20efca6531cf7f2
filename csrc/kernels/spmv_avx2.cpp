// AVX2 bank-balanced matrix-vector product (kernels.h, BankMat): 8 rows interleaved, one row
// per lane.  Per bank, the bank's slice of x is loaded into 1, 2 or 4 ymm registers once per
// row group and each step gathers one x value per lane inside registers:
//   bank <= 8:  vpermps on one register
//   bank <= 16: two vpermps, blendv on bit 3 of the offset (shifted into the sign bit)
//   bank <= 32: four vpermps, three blendv on bits 3 and 4
//   bank > 32:  vgatherdps from memory (slow on Zen; avoid with banks of at most 32)
// One-byte offsets are widened with vpmovzxbd.  Four accumulators hide the FMA latency.
#include <immintrin.h>

#include "kernels/isa_parts.h"
#include "kernels/kernels.h"

namespace sk {
namespace {

template <int NX>
__attribute__((always_inline)) inline __m256 pick(const __m256* xr, __m256i id, const float* xb) {
  if (NX == 1) return _mm256_permutevar8x32_ps(xr[0], id);
  if (NX == 2) {
    const __m256 s3 = _mm256_castsi256_ps(_mm256_slli_epi32(id, 28));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(xr[0], id),
                            _mm256_permutevar8x32_ps(xr[1], id), s3);
  }
  if (NX == 4) {
    const __m256 s3 = _mm256_castsi256_ps(_mm256_slli_epi32(id, 28));
    const __m256 s4 = _mm256_castsi256_ps(_mm256_slli_epi32(id, 27));
    const __m256 a = _mm256_blendv_ps(_mm256_permutevar8x32_ps(xr[0], id),
                                      _mm256_permutevar8x32_ps(xr[1], id), s3);
    const __m256 b = _mm256_blendv_ps(_mm256_permutevar8x32_ps(xr[2], id),
                                      _mm256_permutevar8x32_ps(xr[3], id), s3);
    return _mm256_blendv_ps(a, b, s4);
  }
  return _mm256_i32gather_ps(xb, id, 4);
}

template <int NX>
__attribute__((always_inline)) inline __m256 step(const float* v, const uint8_t* o,
                                                  const __m256* xr, const float* xb, __m256 acc) {
  const __m256i id =
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(o)));
  return _mm256_fmadd_ps(_mm256_loadu_ps(v), pick<NX>(xr, id, xb), acc);
}

template <int NX>
void spmv_groups(const BankMat& w, int g_begin, int g_end, const float* x, const float* init,
                 float* y) {
  const int nb = w.nbanks, keep = w.keep, bs = w.bank_size;
  const size_t per_group = size_t(nb) * keep * 8;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int g = g_begin; g < g_end; ++g) {
    const float* v = w.values + g * per_group;
    const uint8_t* o = w.offs + g * per_group;
    const int r0 = g * 8;
    const int nr = w.rows - r0 < 8 ? w.rows - r0 : 8;
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), lane);
    __m256 a0 = init ? _mm256_maskload_ps(init + r0, m) : _mm256_setzero_ps();
    __m256 a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int b = 0; b < nb; ++b) {
      const float* xb = x + size_t(b) * bs;
      __m256 xr[4];
      if (NX >= 1) xr[0] = _mm256_loadu_ps(xb);
      if (NX >= 2) xr[1] = _mm256_loadu_ps(xb + 8);
      if (NX >= 4) {
        xr[2] = _mm256_loadu_ps(xb + 16);
        xr[3] = _mm256_loadu_ps(xb + 24);
      }
      int q = 0;
      for (; q + 4 <= keep; q += 4, v += 32, o += 32) {
        a0 = step<NX>(v, o, xr, xb, a0);
        a1 = step<NX>(v + 8, o + 8, xr, xb, a1);
        a2 = step<NX>(v + 16, o + 16, xr, xb, a2);
        a3 = step<NX>(v + 24, o + 24, xr, xb, a3);
      }
      for (; q < keep; ++q, v += 8, o += 8) a0 = step<NX>(v, o, xr, xb, a0);
    }
    const __m256 acc = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    if (nr == 8)
      _mm256_storeu_ps(y + r0, acc);
    else
      _mm256_maskstore_ps(y + r0, m, acc);
  }
}

}  // namespace

void spmv_bank_avx2(const BankMat& w, int g_begin, int g_end, const float* x, const float* init,
                    float* y) {
  if (w.bank_size <= 8)
    spmv_groups<1>(w, g_begin, g_end, x, init, y);
  else if (w.bank_size <= 16)
    spmv_groups<2>(w, g_begin, g_end, x, init, y);
  else if (w.bank_size <= 32)
    spmv_groups<4>(w, g_begin, g_end, x, init, y);
  else
    spmv_groups<0>(w, g_begin, g_end, x, init, y);
}

}  // namespace sk
