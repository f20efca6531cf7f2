// AVX-512 bank-balanced matrix-vector product (spmv.h): 16 rows interleaved, one per lane.  A
// step widens its 16 one-byte offsets (vpmovzxbd) and takes x from the bank's slice:
//   bank <= 16: vpermps (permutexvar) on one register
//   bank <= 32: vpermt2ps (permutex2var) on two
//   bank <= 64: two vpermt2ps and a blend on bit 5 of the offset
//   bank > 64:  vgatherdps from memory (fine on Intel, slow on Zen; the packer's default
//               bank for LSTM weights is 16)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/x86_intrinsics.h"

#include "kernels/isa_parts.h"
#include "kernels/spmv.h"
#include "kernels/x86_zmm.h"

namespace sk {
namespace {

struct Avx512 : Zmm {
  using M = __mmask16;
  static constexpr int kMaxNX = 4;
  static M rows(int nr) { return mask(nr); }
  static T load_rows(const float* p, M m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store_rows(float* p, T v, M m) { _mm512_mask_storeu_ps(p, m, v); }
  template <int NX>
  static T pick(const T* xr, const uint8_t* o, const float* xb) {
    const __m512i id =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(o)));
    if constexpr (NX == 1) return _mm512_permutexvar_ps(id, xr[0]);
    if constexpr (NX == 2) return _mm512_permutex2var_ps(xr[0], id, xr[1]);
    if constexpr (NX == 4) {
      const __mmask16 hi = _mm512_test_epi32_mask(id, _mm512_set1_epi32(32));
      const __m512 a = _mm512_permutex2var_ps(xr[0], id, xr[1]);
      const __m512 b = _mm512_permutex2var_ps(xr[2], id, xr[3]);
      return _mm512_mask_blend_ps(hi, a, b);
    }
    return _mm512_i32gather_ps(id, xb, 4);
  }
};

}  // namespace

void spmv_bank_avx512(const BankMat& w, int g_begin, int g_end, const float* x,
                      const float* init, float* y) {
  SpmvBank<Avx512>::run(w, g_begin, g_end, x, init, y);
}

}  // namespace sk
