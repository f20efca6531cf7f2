"""Micro-benchmark of the sparsekit kernels (not a test): single-threaded GFLOP/s.

spmm_b4 (1x4 blocks) and spmm_b1 (unstructured) per ISA on MobileNetV1's pointwise layers at a
given sparsity, counting only the useful FLOPs (2 per stored nonzero weight per pixel), next to
numpy's dense matmul (all FLOPs; numpy's BLAS, forced to one thread if threadpoolctl is
installed, else set OMP_NUM_THREADS=1 / OPENBLAS_NUM_THREADS=1 yourself).  Also the depthwise
convs of MobileNetV1 (3x3) per ISA.

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
    args = ap.parse_args()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    isas = args.isa or [i for i in _native.available_isas() if i != "ref"]
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
    if args.no_dw:
        return
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
            t = _native.time_dwconv(isa, x, w, s, 1, 1, OH, OW, args.repeats)
            flops = 2.0 * 9 * C * OH * OW
            line += f" {t * 1e3:7.3f} ({flops / t * 1e-9:5.1f})"
        for isa in isas:
            t = _native.time_dwconv(isa, x, w, s, 1, 1, OH, OW, args.repeats, blocked=True)
            line += f" {t * 1e3:7.3f} ({flops / t * 1e-9:5.1f})"
        print(line)


if __name__ == "__main__":
    main()
