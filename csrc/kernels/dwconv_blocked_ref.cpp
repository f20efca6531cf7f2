// Reference depthwise convolution on 8-channel blocks: plain loops over the definition in
// kernels.h (DwBlockedFn), independent of dwconv_blocked.h's tiling; and the reference layout
// changes of one block (ToBlockedFn / FromBlockedFn).
#include "kernels/isa_parts.h"

namespace sk {

void dwconv_c8_ref(const DwShape& s, int nblk, const float* x, const float* w,
                   const float* bias, float lo, float hi, float* y, int oy_begin, int oy_end) {
  constexpr int L = kChannelBlock;
  if (oy_begin < 0) oy_begin = 0;
  if (oy_end > s.OH) oy_end = s.OH;
  const ptrdiff_t in = static_cast<ptrdiff_t>(s.H) * s.W * L;
  const ptrdiff_t out = static_cast<ptrdiff_t>(s.OH) * s.OW * L;
  const ptrdiff_t wk = static_cast<ptrdiff_t>(s.k) * s.k * L;
  for (int b = 0; b < nblk; ++b)
    for (int oy = oy_begin; oy < oy_end; ++oy)
      for (int ox = 0; ox < s.OW; ++ox)
        for (int l = 0; l < L; ++l) {
          float acc = bias[b * L + l];
          for (int ky = 0; ky < s.k; ++ky) {
            const int iy = oy * s.stride - s.pad_t + ky;
            if (iy < 0 || iy >= s.H) continue;
            for (int kx = 0; kx < s.k; ++kx) {
              const int ix = ox * s.stride - s.pad_l + kx;
              if (ix < 0 || ix >= s.W) continue;
              acc += w[b * wk + (ky * s.k + kx) * L + l] *
                     x[b * in + (static_cast<ptrdiff_t>(iy) * s.W + ix) * L + l];
            }
          }
          acc = acc < lo ? lo : acc;  // a NaN stays NaN
          acc = acc > hi ? hi : acc;
          y[b * out + (static_cast<ptrdiff_t>(oy) * s.OW + ox) * L + l] = acc;
        }
}

}  // namespace sk

namespace sk {

void to_blocked_ref(const float* x, ptrdiff_t plane, int lanes, size_t n, float* y) {
  constexpr int L = kChannelBlock;
  for (size_t p = 0; p < n; ++p)
    for (int l = 0; l < L; ++l)
      y[p * L + l] = l < lanes ? x[l * plane + static_cast<ptrdiff_t>(p)] : 0.0f;
}

void from_blocked_ref(const float* x, int lanes, size_t n, float* y, ptrdiff_t plane) {
  constexpr int L = kChannelBlock;
  for (int l = 0; l < lanes; ++l)
    for (size_t p = 0; p < n; ++p) y[l * plane + static_cast<ptrdiff_t>(p)] = x[p * L + l];
}

}  // namespace sk
