#!/usr/bin/env python3
"""An expansion and its depthwise conv, merged (SparseConvDepthwise) or not, side by side.

    python -P benchmarks/bench_merged_pairs.py [--threads 1,2] [--runs 200] [--burst 5]

Each pair: a 1x1 conv (C -> M, 85% 1x4, ReLU6) and the depthwise conv after it (3x3, ReLU6),
the geometries of MobileNetV2's expansions at 224 pixels; converted with --layout NCHWc8 with
and without --no-merge (each alone between its two Reorders), both sessions the same threads
and pinning, interleaved round by round, medians of the warm runs (sparsekit.timing).
docs/performance.md round 17.  A benchmark, not a test: it asserts nothing about speed.
"""
from __future__ import annotations

import argparse

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from sparsekit import sessions
from sparsekit.convert import convert
from sparsekit.prune import prune
from sparsekit.timing import interleaved

# (H = W, C, M, stride): MobileNetV2's expansions whose planes convert merges (>= 28x28)
PAIRS = [(112, 16, 96, 2), (56, 24, 144, 1), (56, 24, 144, 2), (28, 32, 192, 1),
         (28, 32, 192, 2)]


def pair(H: int, C: int, M: int, stride: int):
    """Conv 1x1 + ReLU6 + depthwise 3x3 (pads 1) + ReLU6 on a [1, C, H, H] input."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(size=(M, C, 1, 1)), "w2": rng.normal(size=(M, 1, 3, 3)),
             "b": np.zeros(M), "lo": np.array(0.0), "hi": np.array(6.0)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b"], ["e"], name="expand"),
             helper.make_node("Clip", ["e", "lo", "hi"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b"], ["d"], group=M, pads=[1] * 4,
                              strides=[stride] * 2, name="dw"),
             helper.make_node("Clip", ["d", "lo", "hi"], ["y"])]
    g = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                        [1, C, H, H])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(a.astype(np.float32), n)
                           for n, a in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--burst", type=int, default=5)
    a = ap.parse_args()
    for H, C, M, s in PAIRS:
        pruned, _ = prune(pair(H, C, M, s), pattern="block", sparsity=0.85, min_params=0,
                          skip_first=False)
        merged, rep = convert(pruned, layout="NCHWc8")
        assert any(c.fused for c in rep.chains), "the pair was not merged"
        apart, _ = convert(pruned, layout="NCHWc8", merge=False)
        feeds = sessions.make_inputs(pruned)
        for t in (int(x) for x in a.threads.split(",")):
            with sessions.pinned(t) as cfg:
                config = {**sessions.TIMING_CONFIG, **cfg}
                s_ = {"apart": sessions.session(apart, t, config),
                      "merged": sessions.session(merged, t, config)}
                ms = interleaved({k: (lambda v=v, f=feeds: v.run(None, f)) for k, v in s_.items()},
                                 warmup=5, runs=a.runs, seconds=60, burst=a.burst)
            med = {k: float(np.median(v)) for k, v in ms.items()}
            print(f"{C:3d}->{M:3d} on {H}x{H}, stride {s}, {t}t: two nodes {med['apart']:.3f} ms, "
                  f"merged {med['merged']:.3f} ms, {med['apart'] / med['merged']:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
