"""Micro-benchmark of the sparsekit kernels (not a test): single-threaded GFLOP/s.

spmm_b4 (1x4 blocks) and spmm_b1 (unstructured) per ISA on MobileNetV1's pointwise layers at a
given sparsity, counting only the useful FLOPs (2 per stored nonzero weight per pixel), next to
numpy's dense matmul (all FLOPs; numpy's BLAS, forced to one thread if threadpoolctl is
installed, else set OMP_NUM_THREADS=1 / OPENBLAS_NUM_THREADS=1 yourself).  Also the depthwise
convs of MobileNetV1 (3x3) and the bank-balanced matrix-vector product (an LSTM step's
4*hidden x hidden recurrent weight, one line per bank size: each selects its own in-register
gather) per ISA.

    python benchmarks/bench_kernels.py [--sparsity 0.9] [--isa avx2] [--repeats 30]
"""
from __future__ import annotations

import argparse
import os
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

from sparsekit import _native  # noqa: E402

POINTWISE = [  # pixels, in, out
    (12544, 32, 64),
    (3136, 128, 128),
    (784, 256, 256),
    (196, 512, 512),
    (49, 1024, 1024),
]
DEPTHWISE = [  # C, H, W, stride  (MobileNetV1-224, 3x3, pad 1)
    (32, 112, 112, 1),
    (64, 112, 112, 2),
    (128, 56, 56, 1),
    (128, 56, 56, 2),
    (256, 28, 28, 1),
    (256, 28, 28, 2),
    (512, 14, 14, 1),
    (512, 14, 14, 2),
    (1024, 7, 7, 1),
]


def random_blocks(rng, rows, K, B, sparsity):
    """1xB blocks kept with probability 1 - sparsity, as (group_ptr, k_index, values)."""
    groups = (rows + B - 1) // B
    keep = rng.random((groups, K)) >= sparsity
    group_ptr = np.zeros(groups + 1, np.int32)
    group_ptr[1:] = np.cumsum(keep.sum(axis=1))
    k_index = np.nonzero(keep)[1].astype(np.int32)
    values = rng.standard_normal(len(k_index) * B).astype(np.float32)
    return group_ptr, k_index, values


def best_time(fn, repeats):
    """Best of `repeats` (after a warm-up): the stable statistic on a shared machine."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--isa", action="append", help="ISA(s) to run (default: all available)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--no-dw", action="store_true", help="skip the depthwise part")
    ap.add_argument("--no-spmv", action="store_true", help="skip the matrix-vector part")
    args = ap.parse_args()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    isas = args.isa or [i for i in _native.available_isas() if i != "ref"]
    simd = [i for i in isas if i != "ref"]
    rng = np.random.default_rng(0)
    print(f"spmm, sparsity {args.sparsity}, single thread, GFLOP/s on useful FLOPs "
          f"(numpy: dense FLOPs), best of repeats")
    head = f"{'pixels x in x out':>20} {'numpy':>8}"
    for isa in isas:
        head += f" {isa + ' b4':>10} {isa + ' b1':>10}"
    print(head)
    for n, K, M in POINTWISE:
        x = rng.standard_normal((K, n)).astype(np.float32)
        wd = rng.standard_normal((M, K)).astype(np.float32)
        t_np = best_time(lambda wd=wd, x=x: wd @ x, args.repeats)
        line = f"{f'{n}x{K}x{M}':>20} {2 * M * K * n / t_np * 1e-9:8.1f}"
        for isa in isas:
            for B in (4, 1):
                gp, ki, vals = random_blocks(rng, M, K, B, args.sparsity)
                t = _native.time_spmm(isa, B, M, gp, ki, vals, x, args.repeats)
                useful = 2.0 * len(ki) * B * n
                line += f" {useful / t * 1e-9:10.1f}"
        print(line)
    if not args.no_dw:
        depthwise(rng, simd, args.repeats)
    if not args.no_spmv:
        spmv(rng, isas, args.sparsity, args.repeats)


def depthwise(rng, isas, repeats) -> None:
    print("\ndepthwise 3x3 (pad 1), bias+ReLU6, all channels, single thread: ms (GFLOP/s); "
          "'ISA c8': dwconv_blocked on the same data in 8-channel blocks (NCHWc)")
    head = f"{'C x H x W / s':>20}"
    for isa in ["ref"] + isas:
        head += f" {isa:>16}"
    for isa in isas:
        head += f" {isa + ' c8':>16}"
    print(head)
    for C, H, W, s in DEPTHWISE:
        OH, OW = (H + 2 - 3) // s + 1, (W + 2 - 3) // s + 1
        x = rng.standard_normal((C, H, W)).astype(np.float32)
        w = rng.standard_normal((C, 3, 3)).astype(np.float32)
        line = f"{f'{C}x{H}x{W}/{s}':>20}"
        for isa in ["ref"] + isas:
            t = _native.time_dwconv(isa, x, w, s, 1, 1, OH, OW, repeats)
            flops = 2.0 * 9 * C * OH * OW
            line += f" {t * 1e3:7.3f} ({flops / t * 1e-9:5.1f})"
        for isa in isas:
            t = _native.time_dwconv(isa, x, w, s, 1, 1, OH, OW, repeats, blocked=True)
            line += f" {t * 1e3:7.3f} ({flops / t * 1e-9:5.1f})"
        print(line)


SPMV_ROWS, SPMV_K = 4096, 1024  # an LSTM step's recurrent weight, hidden 1024


def spmv(rng, isas, sparsity, repeats) -> None:
    print(f"\nbank-balanced spmv {SPMV_ROWS}x{SPMV_K}, sparsity {sparsity}, single thread: "
          "us per product (GFLOP/s on useful FLOPs)")
    print(f"{'bank':>20}" + "".join(f" {isa:>16}" for isa in isas))
    x = rng.standard_normal(SPMV_K).astype(np.float32)
    for bank in (8, 16, 32, 64):
        keep = max(1, round(bank * (1 - sparsity)))
        nbanks = SPMV_K // bank
        offs = np.argsort(rng.random((SPMV_ROWS, nbanks, bank)), axis=2)[:, :, :keep]
        offs = np.sort(offs, axis=2).astype(np.uint8)
        vals = rng.standard_normal((SPMV_ROWS, nbanks, keep)).astype(np.float32)
        line = f"{f'{bank} (keep {keep})':>20}"
        for isa in isas:
            t = _native.time_spmv_bank(isa, vals, offs, bank, SPMV_K, x, repeats)
            flops = 2.0 * SPMV_ROWS * nbanks * keep
            line += f" {t * 1e6:7.1f} ({flops / t * 1e-9:5.1f})"
        print(line)


if __name__ == "__main__":
    main()
