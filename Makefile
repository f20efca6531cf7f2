# The verbs people type. `make install` then `make test` is the whole set-up on a fresh machine.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install system-deps dev test test-python test-native test-neon test-avx512-emu test-asan bench lint clean

# the CPU build of PyTorch for the fine-tuning tests (on this machine class it lies on disk;
# plain `torch` would fetch a CUDA build of several GB); TORCH= skips it
TORCH ?= torch==2.13.0

install: system-deps ## build and install sparsekit with its test and training extras
	$(if $(TORCH),$(PIP) install "$(TORCH)")
	$(PIP) install ".[test,train]"

system-deps:        ## aarch64 cross compiler + qemu-user (NEON tests), SIMDe (emulated AVX-512 tests); Debian, as root
	@if command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null \
	    && [ -f /usr/include/simde/x86/avx512.h ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user \
	    libsimde-dev >/dev/null; \
	else echo "note: the NEON and emulated AVX-512 tests need g++-aarch64-linux-gnu, qemu-user" \
	  "and libsimde-dev; install them (apt-get install ...) before make test"; fi

dev:                ## editable install for development (rebuilds C++ on reinstall)
	$(PIP) install --no-build-isolation -e ".[test]"

test: lint test-native test-neon test-avx512-emu test-asan test-python   ## everything CI runs

test-python:        ## the pytest suite against the installed package
	$(PYTHON) -P -m pytest -q   # -P: test the installed package, not ./sparsekit

test-native:        ## the C++ kernel test driver, every ISA this CPU has
	cmake -S . -B build-native $$(command -v ninja >/dev/null && echo -G Ninja) -DCMAKE_BUILD_TYPE=Release -DSPARSEKIT_PYTHON=OFF -DSPARSEKIT_NATIVE_TESTS=ON >/dev/null
	cmake --build build-native --target sk_kernel_tests >/dev/null
	./build-native/sk_kernel_tests

test-neon:          ## NEON kernels: cross-compiled for aarch64, run under qemu-user
	bash tests/native/run_neon.sh

test-avx512-emu:    ## AVX-512 kernels on SIMDe's portable intrinsics (any x86 CPU), under ASan
	bash tests/native/run_avx512_emu.sh

test-asan:          ## native kernel tests and the custom-op fuzz tests under AddressSanitizer
	bash tests/native/run_asan.sh
	bash tests/run_ort_asan.sh

bench:              ## benchmarks (not tests): dense onnxruntime vs sparsekit, side by side
	$(PYTHON) benchmarks/run_suite.py --threads 1,2
	$(PYTHON) benchmarks/bench_pointwise.py --threads 1,2

lint:               ## ruff (pip install ruff)
	$(PYTHON) -m ruff check sparsekit models tests benchmarks

clean:
	rm -rf build build-* dist *.egg-info
