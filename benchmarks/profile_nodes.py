#!/usr/bin/env python3
"""Per-node times (ms per run, onnxruntime's profiler) of a zoo model, dense and sparse.

    python benchmarks/profile_nodes.py --zoo mobilenet_v1 --pattern block --sparsity 0.9 --threads 1
        [--layout NCHWc8] [--dense]
A diagnostic, not a benchmark: profiler times are per node, medians over runs.
"""
from __future__ import annotations

import argparse
import statistics

from sparsekit import bench as B
from sparsekit import sessions


def profile(model, feeds, threads, runs, dense):
    with sessions.pinned(threads) as cfg:  # as sparsekit bench runs them
        sess = sessions.session(model, threads, {**sessions.TIMING_CONFIG, **cfg},
                                custom_ops=not dense, profile=True)
        return _profile_run(sess, feeds, runs)


def _profile_run(sess, feeds, runs):
    for _ in range(runs):
        sess.run(None, feeds)
    return [(n, op, statistics.median(ts[1:] or ts))
            for n, (op, ts) in sessions.node_times(sess).items()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="mobilenet_v1")
    ap.add_argument("--pattern", default="block")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--dense", action="store_true")
    ap.add_argument("--layout", default="NCHW", choices=["auto", "NCHW", "NCHWc8"],
                    help="convert's activation layout for the sparse model")
    a = ap.parse_args()
    dense = B.zoo_model(a.zoo)
    pruned, sparse, _, _ = B.prepare(dense, a.pattern, a.sparsity, layout=a.layout,
                                     threads=a.threads)
    feeds = sessions.make_inputs(dense)
    rows = profile(pruned if a.dense else sparse, feeds, a.threads, a.runs, a.dense)
    tot = 0.0
    for n, op, ms in rows:
        tot += ms
        print(f"{op:16s} {ms:7.3f}  {n}")
    print(f"total {tot:.3f} ms")


if __name__ == "__main__":
    main()
