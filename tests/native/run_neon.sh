#!/usr/bin/env bash
# Cross-compile the kernels + native test driver for aarch64 and run them under qemu-user.
# Needs Debian's g++-aarch64-linux-gnu and qemu-user:
#   apt-get install -y g++-aarch64-linux-gnu qemu-user
# Checks correctness of the NEON kernels (and the reference) only, not speed.
# Exit status: the driver's (non-zero on any failure); its last line is "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/../.."
CXX=${CXX_AARCH64:-aarch64-linux-gnu-g++}
QEMU=${QEMU_AARCH64:-qemu-aarch64}
SYSROOT=${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}
for tool in "$CXX" "$QEMU"; do
  command -v "$tool" >/dev/null || {
    echo "run_neon.sh: $tool not found (apt-get install -y g++-aarch64-linux-gnu qemu-user)" >&2
    exit 2
  }
done
OUT=build-neon
mkdir -p "$OUT"
# Every kernel source except the x86 ISA files; the NEON files are the ones under test.
FLAGS=(-O2 -std=c++17 -Wall -Wextra -fno-math-errno -fno-tree-loop-distribute-patterns
       -DSK_HAVE_NEON=1 -Icsrc)
SRCS=()
OBJS=()
for f in csrc/kernels/*.cpp; do
  case "$f" in
    *_avx2.cpp|*_avx512*.cpp) continue ;;
    # as in CMakeLists.txt: the prediction kernels round the quantization's product and sum
    # separately, and GCC's default (-ffp-contract=fast) would fuse them on aarch64
    */predict_*.cpp)
      obj="$OUT/$(basename "$f" .cpp).o"
      "$CXX" "${FLAGS[@]}" -ffp-contract=off -c "$f" -o "$obj"
      OBJS+=("$obj") ;;
    *) SRCS+=("$f") ;;
  esac
done
echo "building $OUT/sk_kernel_tests for aarch64 from: ${SRCS[*]##*/} ${OBJS[*]##*/} test_kernels.cpp"
"$CXX" "${FLAGS[@]}" "${SRCS[@]}" "${OBJS[@]}" tests/native/test_kernels.cpp \
  -o "$OUT/sk_kernel_tests"
echo "running under $QEMU"
"$QEMU" -L "$SYSROOT" "$OUT/sk_kernel_tests" "$@"
