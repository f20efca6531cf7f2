// Scalar reference of the bank-balanced matrix-vector product (kernels.h, BankMat).
#include "kernels/isa_parts.h"
#include "kernels/kernels.h"

namespace sk {

void spmv_bank_ref(const BankMat& w, int g_begin, int g_end, const float* x, const float* init,
                   float* y) {
  const int L = w.lanes;
  const size_t per_bank = size_t(w.keep) * L;
  const size_t per_group = size_t(w.nbanks) * per_bank;
  for (int g = g_begin; g < g_end; ++g) {
    for (int l = 0; l < L; ++l) {
      const int r = g * L + l;
      if (r >= w.rows) break;
      float acc = init ? init[r] : 0.0f;
      for (int b = 0; b < w.nbanks; ++b) {
        const float* xb = x + size_t(b) * w.bank_size;
        const size_t base = g * per_group + b * per_bank + l;
        for (int q = 0; q < w.keep; ++q)
          acc += w.values[base + size_t(q) * L] * xb[w.offs[base + size_t(q) * L]];
      }
      y[r] = acc;
    }
  }
}

}  // namespace sk
