#!/usr/bin/env bash
# Build the kernels + native test driver with AddressSanitizer (and UBSan) into build-asan/
# and run it: every test buffer is allocated at its exact size, so any read or write past
# an input plane, X, Y or the residual is reported.  Exit status: non-zero on any failure
# or sanitizer report; the driver's last line is "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=build-asan
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPARSEKIT_ASAN=ON \
  -DSPARSEKIT_NATIVE_TESTS=ON -DSPARSEKIT_PYTHON=OFF \
  -DCMAKE_CXX_FLAGS="-fsanitize=undefined -fno-sanitize-recover=undefined" >/dev/null
. tests/native/build_or_stop.sh
build_or_stop "$BUILD" sk_kernel_tests
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
"$BUILD/sk_kernel_tests" "$@"
