#!/usr/bin/env python3
"""MobileNetV1's pointwise (1x1) convs: dense Conv in stock onnxruntime vs SparseConv, side by side.

Both run in this process with the same intra-op thread count: a dense Conv(+bias)+Relu model
(graph optimisation level ALL) and the same layer as an ai.sparsekit SparseConv with fused bias
and Relu, at the given sparsity.  After warm-up, runs are interleaved (dense, sparse variants,
dense, ...) and medians compared; the ratio is dense time / sparse time (> 1: sparse is faster).
A benchmark, not a test: absolute times on shared machines drift, ratios hold.

Each session runs through an IOBinding with its input and a preallocated output bound once (as
inside a network, where onnxruntime's memory plan reuses buffers): with plain `run()` every call
allocates and page-faults a fresh output (3.2 MB for the first layer), which on this machine
made the same kernel measure 0.15 or 0.25 ms depending on where the allocator put it, on both
sides.  `--no-binding` measures plain `run()` calls instead.

Every session (dense and sparse alike) runs with sparsekit.sessions' TIMING_CONFIG (the pool
spins during a run, stops at its end) and pinned threads, as `sparsekit bench` does; --spin
gives onnxruntime's default instead (a pool keeps spinning after its run and steals the cores
the next, interleaved, session needs: on a 2-core machine 2-5x worse and noisy).

    python benchmarks/bench_pointwise.py --threads 1,2
    python benchmarks/bench_pointwise.py --variants bsr4,bsr1,bank4 --json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import sparsekit
from sparsekit.sessions import TIMING_CONFIG, pinned, session
from sparsekit.format import opset_import
from sparsekit.pack import make_sparse_conv_node

# pixels x in x out, NCHW (MobileNetV1-224)
LAYERS = [(12544, 32, 64), (3136, 64, 128), (3136, 128, 128), (784, 128, 256), (784, 256, 256),
          (196, 256, 512), (196, 512, 512), (49, 512, 1024), (49, 1024, 1024)]
SIDE = {12544: 112, 3136: 56, 784: 28, 196: 14, 49: 7}
# variant -> (format, block, bank_size)
VARIANTS = {"bsr4": ("bsr", 4, None), "bsr1": ("bsr", 1, None), "bank4": ("bank", 4, 32),
            "bank1": ("bank", 1, 32)}


def _model(nodes, inits, C, hw, sparse):
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, C, hw, hw])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    ops = [helper.make_opsetid("", 17)] + ([opset_import()] if sparse else [])
    return helper.make_model(helper.make_graph(nodes, "bench", [x], [y], inits),
                             opset_imports=ops, ir_version=9)


def pruned_weight(rng, M, C, sparsity, fmt, block, bank_size):
    """A weight [M, C] with the variant's pattern at `sparsity` (largest-magnitude blocks kept)."""
    W = rng.standard_normal((M, C)).astype(np.float32)
    G = -(-M // block)
    Wp = np.zeros((G * block, C), np.float32)
    Wp[:M] = W
    score = np.sqrt((Wp.reshape(G, block, C) ** 2).sum(axis=1))  # [G, C] block norms
    mask = np.zeros((G, C), bool)
    if fmt == "bank":
        keep = max(1, int(round(bank_size * (1 - sparsity))))
        for lo in range(0, C, bank_size):
            part = score[:, lo:lo + bank_size]
            n = min(part.shape[1], keep if part.shape[1] == bank_size
                    else -(-part.shape[1] * keep // bank_size))
            top = np.argsort(-part, axis=1)[:, :n]
            np.put_along_axis(mask[:, lo:lo + bank_size], top, True, axis=1)
    else:
        n = int(round(G * C * (1 - sparsity)))
        flat = np.argsort(-score.ravel())[:n]
        mask.ravel()[flat] = True
    full = np.repeat(mask, block, axis=0)[:M]
    return np.where(full, W, 0.0).astype(np.float32)


def build(rng, P, C, M, sparsity, variants):
    hw = SIDE[P]
    W = rng.standard_normal((M, C, 1, 1)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    dense = _model([helper.make_node("Conv", ["X", "W", "B"], ["C0"]),
                    helper.make_node("Relu", ["C0"], ["Y"])],
                   [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "B")], C, hw, False)
    sparse = {}
    for v in variants:
        fmt, block, bank = VARIANTS[v]
        w = pruned_weight(rng, M, C, sparsity, fmt, block, bank).reshape(M, C, 1, 1)
        node, inits = make_sparse_conv_node("pw", "X", "Y", w, b, fmt=fmt, block=block,
                                            bank_size=bank, activation="relu")
        sparse[v] = _model([node], inits, C, hw, True)
    x = rng.standard_normal((1, C, hw, hw)).astype(np.float32)
    return dense, sparse, x


def dense_session(model, threads, config):
    """Stock onnxruntime (the sparsekit library not loaded), graph optimisation level ALL."""
    return session(model, threads, config, custom_ops=False,
                   graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL)


def _runner(session, x, out_shape, binding):
    """A no-argument callable running `session` once on x (bound, or via run())."""
    if not binding:
        return lambda: session.run(None, {"X": x})
    y = np.empty(out_shape, np.float32)
    io = session.io_binding()
    io.bind_input("X", "cpu", 0, np.float32, list(x.shape), x.ctypes.data)
    io.bind_output("Y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
    return lambda: (session.run_with_iobinding(io), y)[1]


def bench_layer(P, C, M, threads, sparsity, variants, min_time, max_reps, rng, spin,
                binding=True, pin=None):
    dense, sparse, x = build(rng, P, C, M, sparsity, variants)
    config = {} if spin else dict(TIMING_CONFIG)
    config.update(pin or {})  # sparsekit.sessions.pinned: pool workers on their own CPUs
    sessions = {"dense": dense_session(dense, threads, config)}
    for v, m in sparse.items():
        sessions[v] = session(m, threads, config,
                              graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    shape = (1, M, SIDE[P], SIDE[P])
    runners = {k: _runner(s, x, shape, binding) for k, s in sessions.items()}
    ref = np.array(sessions["dense"].run(None, {"X": x})[0])
    for k, run in runners.items():  # warm-up; every variant must compute the same layer shape
        for _ in range(3):
            out = run()
        out = out[0] if isinstance(out, list) else out
        assert out.shape == ref.shape, (k, out.shape)
    times = {k: [] for k in sessions}
    t_start = time.perf_counter()
    reps = 0
    while reps < max_reps and (reps < 5 or time.perf_counter() - t_start < min_time):
        for k, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t0)
        reps += 1
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    row = {"layer": f"{P}x{C}x{M}", "pixels": P, "in": C, "out": M, "threads": threads,
           "sparsity": sparsity, "reps": reps, "dense_ms": round(med["dense"], 4)}
    for v in variants:
        row[f"{v}_ms"] = round(med[v], 4)
        row[f"{v}_ratio"] = round(med["dense"] / med[v], 3)
    assert ref.shape == shape
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--variants", default="bsr4",
                    help=f"comma-separated of {','.join(VARIANTS)} (default bsr4)")
    ap.add_argument("--layers", default="", help="subset, e.g. 784x256x256,49x1024x1024")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per layer")
    ap.add_argument("--max-reps", type=int, default=200)
    ap.add_argument("--spin", action="store_true",
                    help="onnxruntime's default spinning, which continues after each run "
                         "(default: spin only during a run, for every session)")
    ap.add_argument("--no-pin", action="store_true",
                    help="leave threads unpinned (default: the main thread on the first CPU, "
                         "onnxruntime's pool workers on the next ones, as sparsekit bench does)")
    ap.add_argument("--no-binding", action="store_true",
                    help="time plain run() calls (a fresh output every call) instead of an "
                         "IOBinding with a preallocated output")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t]
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}")
    layers = LAYERS
    if args.layers:
        want = set(args.layers.split(","))
        layers = [l for l in LAYERS if f"{l[0]}x{l[1]}x{l[2]}" in want]
    rng = np.random.default_rng(0)
    try:
        from sparsekit import _native
        isas = list(_native.available_isas())
    except ImportError:
        isas = []
    info = {"onnxruntime": ort.__version__, "isa_env": os.environ.get("SPARSEKIT_ISA", "(auto)"),
            "available_isas": isas, "library": sparsekit.get_library_path(), "spin": args.spin,
            "binding": not args.no_binding}
    rows = []
    if not args.json:
        print(f"# onnxruntime {info['onnxruntime']}, SPARSEKIT_ISA={info['isa_env']}, "
              f"available {isas}, sparsity {args.sparsity}, "
              f"spinning {'default' if args.spin else 'during runs'}, "
              f"{'run()' if args.no_binding else 'IOBinding, preallocated outputs'}")
        head = f"{'layer':>14} {'thr':>3} {'dense ms':>9}" + "".join(
            f" {v + ' ms':>10} {'ratio':>6}" for v in variants)
        print(head)
    for t in threads:
        for P, C, M in layers:
            with pinned(t, not args.no_pin) as pin:
                row = bench_layer(P, C, M, t, args.sparsity, variants, args.min_time,
                                  args.max_reps, rng, args.spin, not args.no_binding, pin)
            rows.append(row)
            if not args.json:
                print(f"{row['layer']:>14} {t:>3} {row['dense_ms']:>9.3f}" + "".join(
                    f" {row[v + '_ms']:>10.3f} {row[v + '_ratio']:>5.2f}x" for v in variants),
                    flush=True)
        if not args.json:
            for v in variants:
                tot_d = sum(r["dense_ms"] for r in rows if r["threads"] == t)
                tot_s = sum(r[v + "_ms"] for r in rows if r["threads"] == t)
                print(f"{'sum':>14} {t:>3} {tot_d:>9.3f}  {v}: {tot_s:.3f} ms, {tot_d / tot_s:.2f}x")
    if args.json:
        json.dump({"info": info, "results": rows}, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
