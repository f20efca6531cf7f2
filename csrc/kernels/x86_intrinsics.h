// The intrinsics of the AVX-512 kernels.  Normally the compiler's <immintrin.h>.  In the
// emulated test build (tests/native/run_avx512_emu.sh defines SK_EMULATE_AVX512 and compiles
// these files for AVX2 only) they come from SIMDe, whose portable versions compute what each
// instruction computes: the AVX-512 kernels are then checked against the reference on a CPU
// without AVX-512.  That checks the kernels' logic (tiles, masks, tails, index arithmetic), not
// their instruction encoding or speed, which need the real CPU.
#pragma once

#if defined(SK_EMULATE_AVX512)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#include <cstdint>
#include <cstring>

// The intrinsics the kernels use that SIMDe 0.7 (Debian 12) lacks, from their
// definitions in Intel's intrinsics guide.  A masked load reads only the selected lanes, as the
// instruction does, so AddressSanitizer still catches a mask that reaches past a buffer.
namespace sk_emu {
inline simde__m512 maskz_loadu_ps(simde__mmask16 k, const void* p) {
  float v[16] = {};
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) std::memcpy(&v[i], static_cast<const float*>(p) + i, sizeof(float));
  return simde_mm512_loadu_ps(v);
}
// Selected lanes take consecutive floats from p, in lane order; the others are 0.
inline simde__m512 maskz_expandloadu_ps(simde__mmask16 k, const void* p) {
  float v[16] = {};
  int j = 0;
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) std::memcpy(&v[i], static_cast<const float*>(p) + j++, sizeof(float));
  return simde_mm512_loadu_ps(v);
}
// Writes only the selected lanes.
inline void mask_storeu_ps(void* p, simde__mmask16 k, simde__m512 a) {
  float v[16];
  simde_mm512_storeu_ps(v, a);
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) std::memcpy(static_cast<float*>(p) + i, &v[i], sizeof(float));
}
// Lane i reads base + idx[i] * scale bytes, where selected (all lanes without a mask).
inline simde__m512 mask_i32gather_ps(simde__m512 src, simde__mmask16 k, simde__m512i idx,
                                     const void* base, int scale) {
  float v[16];
  int32_t off[16];
  simde_mm512_storeu_ps(v, src);
  simde_mm512_storeu_si512(off, idx);
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1)
      std::memcpy(&v[i], static_cast<const char*>(base) + int64_t(off[i]) * scale, sizeof(float));
  return simde_mm512_loadu_ps(v);
}
inline simde__m512 i32gather_ps(simde__m512i idx, const void* base, int scale) {
  return mask_i32gather_ps(simde_mm512_setzero_ps(), 0xFFFF, idx, base, scale);
}
inline simde__m512i cvtepu8_epi32(simde__m128i a) {
  uint8_t b[16];
  simde_mm_storeu_si128(reinterpret_cast<simde__m128i*>(b), a);
  int32_t v[16];
  for (int i = 0; i < 16; ++i) v[i] = b[i];
  return simde_mm512_loadu_si512(v);
}
}  // namespace sk_emu
#define _mm512_maskz_loadu_ps sk_emu::maskz_loadu_ps
#define _mm512_maskz_expandloadu_ps sk_emu::maskz_expandloadu_ps
#define _mm512_mask_storeu_ps sk_emu::mask_storeu_ps
#define _mm512_cvtepu8_epi32 sk_emu::cvtepu8_epi32
#define _mm512_mask_i32gather_ps sk_emu::mask_i32gather_ps
#define _mm512_i32gather_ps sk_emu::i32gather_ps
// SIMDe 0.7 has this one but no native alias for it
#define _mm512_shuffle_f32x4(a, b, imm8) simde_mm512_shuffle_f32x4(a, b, imm8)
#else
#include <immintrin.h>
#endif
