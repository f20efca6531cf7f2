// Bank-balanced matrix-vector product (kernels.h SpmvFn, BankMat): one template for the SIMD
// ISAs over a vector policy V, as spmm.h.
//
//   struct V {
//     using T;  using M;                 // kLanes floats; what a partial vector needs
//     static constexpr int kLanes;       // rows interleaved per group (one row per lane)
//     static constexpr int kMaxNX;       // registers a bank's x slice may take (1, 2, 4; 0: none)
//     static M rows(int nr);             // the first nr lanes (1 <= nr <= kLanes)
//     static T load(const float* p);
//     static T load_rows(const float* p, M m); static void store_rows(float* p, T v, M m);
//     static T zero(); static T add(T a, T b); static T fma(T a, T b, T c);  // a * b + c
//     template <int NX> static T pick(const T* xr, const uint8_t* o, const float* xb);
//   };
//
// Every lane does the same work: all rows of a group step through the same (bank, q) sequence.
// Per bank, the bank's slice of x is loaded into NX registers once per row group and each step
// takes one x value per lane with `pick`: NX = 1, 2, 4 gather inside registers (permutes, the
// ISA's own), NX = 0 reads x from memory (a hardware gather, or lane loads).  NX is the fewest
// registers that hold the bank, 0 past kMaxNX.  Four accumulators hide the FMA latency.
//
// Everything has internal linkage: each ISA file compiles its own copy with its own flags.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/kernels.h"

namespace sk {
namespace {

template <class V>
struct SpmvBank {
  using T = typename V::T;
  static constexpr int kL = V::kLanes;

  template <int NX>
  static inline __attribute__((always_inline)) T step(const float* v, const uint8_t* o,
                                                      const T* xr, const float* xb, T acc) {
    return V::fma(V::load(v), V::template pick<NX>(xr, o, xb), acc);
  }

  template <int NX>
  static void groups(const BankMat& w, int g_begin, int g_end, const float* x,
                     const float* init, float* y) {
    const int nb = w.nbanks, keep = w.keep, bs = w.bank_size;
    const size_t per_group = size_t(nb) * keep * kL;
    for (int g = g_begin; g < g_end; ++g) {
      const float* v = w.values + g * per_group;
      const uint8_t* o = w.offs + g * per_group;
      const int r0 = g * kL;
      const auto m = V::rows(w.rows - r0 < kL ? w.rows - r0 : kL);
      T a0 = init ? V::load_rows(init + r0, m) : V::zero();
      T a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
      for (int b = 0; b < nb; ++b) {
        const float* xb = x + size_t(b) * bs;
        T xr[NX > 0 ? NX : 1];
        _Pragma("GCC unroll 4") for (int i = 0; i < NX; ++i) xr[i] = V::load(xb + kL * i);
        int q = 0;
        for (; q + 4 <= keep; q += 4, v += 4 * kL, o += 4 * kL) {
          a0 = step<NX>(v, o, xr, xb, a0);
          a1 = step<NX>(v + kL, o + kL, xr, xb, a1);
          a2 = step<NX>(v + 2 * kL, o + 2 * kL, xr, xb, a2);
          a3 = step<NX>(v + 3 * kL, o + 3 * kL, xr, xb, a3);
        }
        for (; q < keep; ++q, v += kL, o += kL) a0 = step<NX>(v, o, xr, xb, a0);
      }
      V::store_rows(y + r0, V::add(V::add(a0, a1), V::add(a2, a3)), m);
    }
  }

  static void run(const BankMat& w, int g_begin, int g_end, const float* x, const float* init,
                  float* y) {
    const int bs = w.bank_size;
    if (V::kMaxNX >= 1 && bs <= kL)
      groups<V::kMaxNX >= 1 ? 1 : 0>(w, g_begin, g_end, x, init, y);
    else if (V::kMaxNX >= 2 && bs <= 2 * kL)
      groups<V::kMaxNX >= 2 ? 2 : 0>(w, g_begin, g_end, x, init, y);
    else if (V::kMaxNX >= 4 && bs <= 4 * kL)
      groups<V::kMaxNX >= 4 ? 4 : 0>(w, g_begin, g_end, x, init, y);
    else
      groups<0>(w, g_begin, g_end, x, init, y);
  }
};

}  // namespace
}  // namespace sk
