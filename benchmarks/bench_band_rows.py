#!/usr/bin/env python3
"""What fusing an expansion with its depthwise conv could save: the pair on bands of rows.

    python -P benchmarks/bench_band_rows.py [--rows 112,34,18] [--threads 1] [--runs 400]

MobileNetV2's first expansion (16 -> 96 channels, 1x1, 85% 1x4, ReLU6) and the stride-2 3x3
depthwise conv after it (ReLU6), blocked (convert --layout NCHWc8), on planes 112 pixels wide
and R rows high. Per node, the profiler's median time divided by R: microseconds per input row.
On the full 112-row plane the 96-channel expansion (4.8 MB) leaves the caches before the
depthwise conv reads it; on a band of 18 rows (the input rows of 8 output rows) it stays in L2.
The difference per row is what a fused op that runs both on one band at a time could save on
this layer (its halo rows and call overhead not counted). A diagnostic, not a benchmark of a
shipped op: docs/performance.md round 17.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from sparsekit import bench as B
from sparsekit import sessions


def pair(rows: int, width: int = 112, cin: int = 16, cmid: int = 96, stride: int = 2):
    """Conv 1x1 + ReLU6 + depthwise 3x3 (pads 1) + ReLU6 on a [1, cin, rows, width] input."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(size=(cmid, cin, 1, 1)), "w2": rng.normal(size=(cmid, 1, 3, 3)),
             "b": np.zeros(cmid), "lo": np.array(0.0), "hi": np.array(6.0)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b"], ["e"]),
             helper.make_node("Clip", ["e", "lo", "hi"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b"], ["d"], group=cmid, pads=[1] * 4,
                              strides=[stride] * 2),
             helper.make_node("Clip", ["d", "lo", "hi"], ["y"])]
    g = helper.make_graph(nodes, "pair",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, rows, width])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(a.astype(np.float32), n) for n, a in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="112,34,18")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=400)
    a = ap.parse_args()
    for rows in (int(r) for r in a.rows.split(",")):
        dense = pair(rows)
        _, sparse, _, _ = B.prepare(dense, "block", 0.85, layout="NCHWc8", threads=a.threads)
        feeds = sessions.make_inputs(dense)
        with sessions.pinned(a.threads) as cfg:
            s = sessions.session(sparse, a.threads, {**sessions.TIMING_CONFIG, **cfg},
                                 custom_ops=True, profile=True)
            for _ in range(a.runs):
                s.run(None, feeds)
            times = {op: statistics.median(ts[1:]) for _, (op, ts) in sessions.node_times(s).items()
                     if op in ("SparseConv", "DepthwiseConv")}
        per_row = {op: 1000 * ms / rows for op, ms in times.items()}
        print(f"{rows:4d} rows: " + "  ".join(f"{op} {us:.2f}" for op, us in per_row.items())
              + f"  sum {sum(per_row.values()):.2f} us/row", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
