// PLACEHOLDER until the AVX2 kernels land: no table, so dispatch falls back.
#include "kernels/kernels.h"
namespace sk { const KernelTable* kernels_avx2() { return nullptr; } }
