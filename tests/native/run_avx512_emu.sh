#!/usr/bin/env bash
# The AVX-512 kernels on a CPU without AVX-512: compiled for AVX2 with SIMDe's portable
# intrinsics (csrc/kernels/x86_intrinsics.h, SK_EMULATE_AVX512) into build-avx512-emu/, under
# AddressSanitizer (and UBSan for the driver), then
#   1. the native test driver: the avx512 table against the reference;
#   2. the op tests (SparseConv, SparseGemm, depthwise, PredictedConv ...) on that build of the
#      custom-op library, with SPARSEKIT_ISA=avx512, against stock onnxruntime.
# Checks their logic, not their encoding or speed.  Needs SIMDe's headers (Debian:
# apt-get install libsimde-dev).  On a CPU with AVX-512 `make test-native` runs the real ones.
# Exit status: the driver's; its last line is "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -f /usr/include/simde/x86/avx512.h ] && ! echo '#include <simde/x86/avx512.h>' |
    ${CXX:-c++} -x c++ -fsyntax-only - 2>/dev/null; then
  echo "run_avx512_emu.sh: SIMDe headers not found (apt-get install -y libsimde-dev)" >&2
  exit 2
fi
BUILD=build-avx512-emu
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPARSEKIT_ASAN=ON \
  -DSPARSEKIT_EMULATE_AVX512=ON -DSPARSEKIT_NATIVE_TESTS=ON -DSPARSEKIT_PYTHON=OFF \
  -DCMAKE_CXX_FLAGS="-fsanitize=undefined -fno-sanitize-recover=undefined" >/dev/null
. tests/native/build_or_stop.sh
build_or_stop "$BUILD" sk_kernel_tests sparsekit_ort
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# ref and avx2 run natively in `make test-native` / run_asan.sh: only the emulated table here
"$BUILD/sk_kernel_tests" --isa avx512

# as in tests/run_ort_asan.sh: the ASan runtime and libstdc++ preloaded into python
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so.6)" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1" \
SPARSEKIT_LIBRARY="$PWD/$BUILD/libsparsekit_ort.so" SPARSEKIT_TEST_ISAS=avx512 \
  "${PYTHON:-python3}" -P -m pytest tests/test_ort_ops.py tests/test_blocked_ops.py \
  tests/test_predict.py -q \
  -p no:cacheprovider -k "not unavailable_isa" "$@"
echo "emulated AVX-512: OK"
