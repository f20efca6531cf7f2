// PLACEHOLDER until the AVX-512 kernels land: no table, so dispatch falls back.
#include "kernels/kernels.h"
namespace sk { const KernelTable* kernels_avx512() { return nullptr; } }
