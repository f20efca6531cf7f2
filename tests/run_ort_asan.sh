#!/usr/bin/env bash
# The custom-op library under AddressSanitizer: build libsparsekit_ort.so with -fsanitize=address
# into build-asan-ort/, then run the fuzz and end-to-end op tests with it loaded into the stock
# onnxruntime (LD_PRELOAD puts the ASan runtime first; SPARSEKIT_LIBRARY points sparsekit at the
# instrumented library).  Any out-of-bounds access aborts the run with a report.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
BUILD=build-asan-ort

gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPARSEKIT_ASAN=ON \
  -DSPARSEKIT_PYTHON=OFF >/dev/null
cmake --build "$BUILD" --target sparsekit_ort >/dev/null

LIB="$PWD/$BUILD/libsparsekit_ort.so"
ASAN_RT="$(gcc -print-file-name=libasan.so)"
# libstdc++ must be loaded when the ASan runtime starts, or its __cxa_throw interceptor finds no
# real __cxa_throw (python itself does not link libstdc++) and the first C++ throw aborts.
STDCXX="$(g++ -print-file-name=libstdc++.so.6)"
# detect_leaks=0: CPython and onnxruntime keep allocations alive at exit by design.
# Python's own allocator is not instrumented; only our library is.
LD_PRELOAD="$ASAN_RT $STDCXX" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1" \
SPARSEKIT_LIBRARY="$LIB" \
  "$PYTHON" -P -m pytest tests/test_ort_fuzz.py tests/test_ort_ops.py tests/test_blocked_ops.py \
  tests/test_sequence.py \
  tests/test_predict.py -q -p no:cacheprovider "$@"
echo "ASan run of the custom-op library: OK ($LIB)"
