// Where a PredictedConv output pixel's taps come from (kernels.h, PredictImage): shared by the
// prediction kernels of every ISA.
#pragma once

#include <cstring>

#include "kernels/kernels.h"

namespace sk {

// Pixel index iy * W + ix of tap (ky, kx) of output pixel (oy, ox), or -1 outside the image.
inline int64_t tap_pixel(const PredictImage& img, int64_t oy, int64_t ox, int ky, int kx) {
  const int64_t iy = oy * img.sh - img.pt + int64_t(ky) * img.dh;
  const int64_t ix = ox * img.sw - img.pl + int64_t(kx) * img.dw;
  if (iy < 0 || iy >= img.H || ix < 0 || ix >= img.W) return -1;
  return iy * img.W + ix;
}

// The 7-bit activations of pixels [p0, p0 + n) as rows of K4 bytes: tap by tap, C4 each (an
// outside tap reads zx: the quantized 0; padding channels are 0).
inline void gather_quantized(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                             uint8_t* rows) {
  for (int i = 0; i < n; ++i) {
    const int64_t oy = (p0 + i) / img.OW, ox = (p0 + i) % img.OW;
    uint8_t* d = rows + static_cast<ptrdiff_t>(i) * w.K4;
    for (int ky = 0; ky < img.kh; ++ky)
      for (int kx = 0; kx < img.kw; ++kx, d += w.C4) {
        const int64_t q = tap_pixel(img, oy, ox, ky, kx);
        if (q >= 0) {
          std::memcpy(d, img.xq + q * w.C4, size_t(w.C4));
        } else {
          std::memset(d, img.zx, size_t(w.C));
          std::memset(d + w.C, 0, size_t(w.C4 - w.C));
        }
      }
  }
}

// Pointers to the fp32 channels of each tap of output pixel p (img.zeros outside).
inline void tap_runs(const PredictMat& w, const PredictImage& img, int64_t p,
                     const float** runs) {
  const int64_t oy = p / img.OW, ox = p % img.OW;
  for (int ky = 0, t = 0; ky < img.kh; ++ky)
    for (int kx = 0; kx < img.kw; ++kx, ++t) {
      const int64_t q = tap_pixel(img, oy, ox, ky, kx);
      runs[t] = q >= 0 ? img.x + q * w.C : img.zeros;
    }
}

}  // namespace sk
