// Run-time ISA selection: cpuid on x86, compile-time on aarch64, SPARSEKIT_ISA to override.
#include <cstdlib>
#include <cstring>

#include "kernels/kernels.h"

namespace sk {

#if !defined(SK_HAVE_X86)
const KernelTable* kernels_avx2() { return nullptr; }
const KernelTable* kernels_avx512() { return nullptr; }
#endif
#if !defined(SK_HAVE_NEON)
const KernelTable* kernels_neon() { return nullptr; }
#endif

bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::ref:
      return true;
#if defined(SK_HAVE_X86)
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::avx512:
#if defined(SK_EMULATE_AVX512)
      return true;  // test build: the AVX-512 kernels run on SIMDe (x86_intrinsics.h)
#endif
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
#endif
#if defined(SK_HAVE_NEON)
    case Isa::neon:
      return true;  // Advanced SIMD is mandatory on aarch64
#endif
    default:
      return false;
  }
}

#if defined(SK_HAVE_X86)
bool cpu_has_avx512vnni() {
#if defined(SK_EMULATE_AVX512)
  return true;
#else
  return cpu_has(Isa::avx512) && __builtin_cpu_supports("avx512vnni");
#endif
}
#endif

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::ref: return "ref";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::neon: return "neon";
  }
  return "?";
}

const KernelTable* kernels_for(Isa isa) {
  if (!cpu_has(isa)) return nullptr;
  switch (isa) {
    case Isa::ref: return kernels_ref();
    case Isa::avx2: return kernels_avx2();
    case Isa::avx512: return kernels_avx512();
    case Isa::neon: return kernels_neon();
  }
  return nullptr;
}

const KernelTable* select_kernels(const char** error) {
  const char* want = std::getenv("SPARSEKIT_ISA");
  if (want && *want) {
    static const Isa all[] = {Isa::ref, Isa::avx2, Isa::avx512, Isa::neon};
    for (Isa isa : all) {
      if (std::strcmp(want, isa_name(isa)) == 0) {
        const KernelTable* t = kernels_for(isa);
        if (!t && error)
          *error = "SPARSEKIT_ISA names an ISA this CPU or build does not support";
        return t;
      }
    }
    if (error) *error = "SPARSEKIT_ISA must be one of ref, avx2, avx512, neon";
    return nullptr;
  }
  static const Isa best_first[] = {Isa::avx512, Isa::avx2, Isa::neon, Isa::ref};
  for (Isa isa : best_first)
    if (const KernelTable* t = kernels_for(isa)) return t;
  return kernels_ref();
}

}  // namespace sk
