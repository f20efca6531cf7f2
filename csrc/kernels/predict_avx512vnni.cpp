// AVX-512 VNNI ReLU-output prediction (kernels.h, PredictFn / PredictUnitsFn), compiled with the
// AVX-512 flags plus -mavx512vnni and chosen by the avx512 table only when the CPU has VNNI
// (spmm_avx512.cpp); the 7-bit quantization and the full-precision pass at given outputs are
// the AVX2 ones.  The tile loop, decision and full-precision pass are predict_x86.h's.
//
// vpdpbusd adds the four u8 x s8 products of each 32-bit lane straight into an int32
// accumulator: one instruction per 32 products where AVX2 needs vpmaddubsw + vpaddw and a
// periodic vpmaddwd widening, and no int16 partial sums, so 8-bit weights cost what 4-bit ones
// do.  Prediction tile: 16 output rows (two vectors of 8 lanes, the packing of kernels.h's
// PredictMat, as AVX2) x 8 pixels = 16 accumulators in the 32 vector registers EVEX gives.
// The 256-bit EVEX form keeps the packing and the decision code of the AVX2 kernel; a 512-bit
// tile would need a second weight packing.
#include "kernels/x86_intrinsics.h"

#include "kernels/predict_x86.h"

namespace sk {
namespace {

struct DotVnni {
  static constexpr int kPixels = 8;

  template <int V, int R>
  static void tile(const PredictMat& w, int b, const uint8_t* xq, int k_begin, int k_end,
                   __m256i (&acc)[V][R]) {
    for (int k = k_begin; k < k_end; ++k) {
      __m256i wv[V];
      load_weights(w, b, k, wv);
      for (int r = 0; r < R; ++r) {
        const __m256i xv = broadcast_pixel(w, xq, r, k);
        for (int v = 0; v < V; ++v) acc[v][r] = _mm256_dpbusd_epi32(acc[v][r], xv, wv[v]);
      }
    }
  }
};

}  // namespace

int64_t predict_avx512vnni(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                           uint8_t* scratch, float* y, ptrdiff_t y_stride) {
  return predict_x86<DotVnni>(w, img, p0, n, scratch, y, y_stride);
}

void predict_units_avx512vnni(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                              uint8_t* scratch, int32_t* u, ptrdiff_t u_stride) {
  predict_units_x86<DotVnni>(w, img, p0, n, scratch, u, u_stride);
}

}  // namespace sk
