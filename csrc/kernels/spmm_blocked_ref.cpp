// Reference 1x4 SpMM on 8-channel blocks: plain loops over kernels.h's SpmmBlockedFn /
// SpmmPanelBlockedFn definitions, reading X in place (no panel of its own), independent of
// spmm_blocked.h's tiling.
#include "kernels/isa_parts.h"

namespace sk {
namespace {

// One loop for both entries; x_at(j, p) = X(k_j, p), the only thing they read differently.
template <class XAt>
void ref_blocked(size_t n, const SpMat& w, int g_begin, int g_end, float* y, ptrdiff_t y_bstride,
                 const Epilogue& ep, XAt x_at) {
  constexpr int L = kChannelBlock;
  for (int g = g_begin; g < g_end; ++g) {
    const bool has = g < w.groups;
    for (int b = 0; b < 4; ++b) {
      const int r = g * 4 + b;
      const ptrdiff_t lane = (g % 2) * 4 + b;
      for (size_t p = 0; p < n; ++p) {
        float acc = ep.bias ? ep.bias[r] : 0.0f;
        if (has)
          for (int32_t j = w.group_ptr[g]; j < w.group_ptr[g + 1]; ++j)
            acc += w.values[static_cast<size_t>(j) * 4 + b] * x_at(j, p);
        const ptrdiff_t at = static_cast<ptrdiff_t>(p) * L + lane;
        const float res = ep.residual ? ep.residual[(g / 2) * ep.residual_stride + at] : 0.0f;
        if (!ep.residual_after_act) acc += res;
        acc = acc < ep.lo ? ep.lo : acc;  // a NaN stays NaN
        acc = acc > ep.hi ? ep.hi : acc;
        if (ep.residual_after_act) acc += res;
        y[(g / 2) * y_bstride + at] = acc;
      }
    }
  }
}

}  // namespace

void spmm_c8_ref(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                 ptrdiff_t x_bstride, int /*x_blocks*/, float* y, ptrdiff_t y_bstride,
                 const Epilogue& ep, float* /*panel*/, int panel_stride) {
  constexpr int L = kChannelBlock;
  ref_blocked(n, w, g_begin, g_end, y, y_bstride, ep, [&](int32_t j, size_t p) {
    const int32_t k = w.x_offset[j] / panel_stride;  // x_offset = k * panel_stride
    return x[(k / L) * x_bstride + static_cast<ptrdiff_t>(p) * L + k % L];
  });
}

void spmm_panel_c8_ref(size_t n, const SpMat& w, int g_begin, int g_end, const float* panel,
                       float* y, ptrdiff_t y_bstride, const Epilogue& ep) {
  ref_blocked(n, w, g_begin, g_end, y, y_bstride, ep,
              [&](int32_t j, size_t p) { return panel[w.x_offset[j] + p]; });
}

}  // namespace sk
