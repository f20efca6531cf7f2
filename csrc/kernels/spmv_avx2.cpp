// AVX2 bank-balanced matrix-vector product (spmv.h): 8 rows interleaved, one per lane.  A
// step widens its 8 one-byte offsets (vpmovzxbd) and takes x from the bank's slice:
//   bank <= 8:  vpermps on one register
//   bank <= 16: two vpermps, blendv on bit 3 of the offset (shifted into the sign bit)
//   bank <= 32: four vpermps, three blendv on bits 3 and 4
//   bank > 32:  vgatherdps from memory (slow on Zen; avoid with banks of at most 32)
#include <immintrin.h>

#include "kernels/isa_parts.h"
#include "kernels/spmv.h"
#include "kernels/x86_ymm.h"

namespace sk {
namespace {

struct Avx2 : Ymm {
  using M = __m256i;
  static constexpr int kMaxNX = 4;
  static M rows(int nr) { return mask(nr); }
  static T load_rows(const float* p, M m) { return _mm256_maskload_ps(p, m); }
  static void store_rows(float* p, T v, M m) { _mm256_maskstore_ps(p, m, v); }
  template <int NX>
  static T pick(const T* xr, const uint8_t* o, const float* xb) {
    const __m256i id = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(o)));
    if constexpr (NX == 1) return _mm256_permutevar8x32_ps(xr[0], id);
    if constexpr (NX == 2) {
      const __m256 s3 = _mm256_castsi256_ps(_mm256_slli_epi32(id, 28));
      return _mm256_blendv_ps(_mm256_permutevar8x32_ps(xr[0], id),
                              _mm256_permutevar8x32_ps(xr[1], id), s3);
    }
    if constexpr (NX == 4) {
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
};

}  // namespace

void spmv_bank_avx2(const BankMat& w, int g_begin, int g_end, const float* x, const float* init,
                    float* y) {
  SpmvBank<Avx2>::run(w, g_begin, g_end, x, init, y);
}

}  // namespace sk
