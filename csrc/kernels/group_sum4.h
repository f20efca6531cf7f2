// One 1x4 group at one pixel, shared by the B = 4 SpMMs (spmm.h, spmm_blocked.h) for a lone
// pixel or the last pixels after a plane's vectors: a group's 4 rows as one 4-float vector
// (GCC's vector extension: an xmm or q register on every ISA), one multiply-add per block.
// Internal linkage, as the templates.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sk {
namespace {

typedef float F4 __attribute__((vector_size(16)));

inline __attribute__((always_inline)) F4 load_f4(const float* p) {
  F4 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// sum over blocks j in [j0, j1) of values[4j .. 4j+3] * x[x_offset[j]]; four sums in turn hide
// the FMA latency.
inline __attribute__((always_inline)) F4 group_sum4(const float* values,
                                                    const int32_t* x_offset, int32_t j0,
                                                    int32_t j1, const float* x) {
  F4 s[4] = {};
  int32_t j = j0;
  for (; j + 4 <= j1; j += 4) {
    _Pragma("GCC unroll 4") for (int u = 0; u < 4; ++u)
      s[u] += load_f4(values + 4 * static_cast<size_t>(j + u)) * x[x_offset[j + u]];
  }
  for (; j < j1; ++j) s[0] += load_f4(values + 4 * static_cast<size_t>(j)) * x[x_offset[j]];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

}  // namespace
}  // namespace sk
