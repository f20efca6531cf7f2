#!/usr/bin/env python3
"""One MobileNetV2 inverted-residual block (1x1 expand, 3x3 depthwise, 1x1 projection with the
residual at stride 1) in three activation layouts, per-node profiler medians.

    python -P benchmarks/bench_block_layouts.py [--block 24,144,56,1] [--sparsity 0.85]
        [--rounds 400]

  * nchw: every op on NCHW planes (`convert --layout NCHW`);
  * blocked: the chain in 8-channel blocks with a Reorder in and out (`--layout NCHWc8`);
  * mixed: expand NCHW -> NCHWc8, blocked depthwise, a Reorder to NCHW, the projection (and
    its residual) on NCHW planes: what a depthwise conv writing NCHW would save the projection
    (no panel transposes) and what the layout change costs (the Reorder node).
The three sessions run interleaved, 1 thread; same weights, outputs checked equal.
A benchmark, not a test: compare columns of one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import numpy as np
from onnx import TensorProto, helper

from sparsekit import sessions
from sparsekit.format import opset_import
from sparsekit.pack import make_depthwise_node, make_reorder_node, make_sparse_conv_node

CLIP6 = dict(activation="clip", clip_min=0.0, clip_max=6.0)
LAYOUTS = ("nchw", "blocked", "mixed")


def block_model(layout, C, E, H, s, w1, b1, wd, bd, w2, b2):
    res = s == 1
    nodes, inits = [], []

    def add(made):
        nodes.append(made[0])
        inits.extend(made[1])

    dw = dict(strides=(s, s), pads=(1, 1, 1, 1), **CLIP6)
    if layout == "nchw":
        add(make_sparse_conv_node("e", "x", "a", w1, b1, **CLIP6))
        add(make_depthwise_node("d", "a", "b", wd, bd, **dw))
        add(make_sparse_conv_node("p", "b", "y", w2, b2, residual="x" if res else None))
    elif layout == "blocked":
        nodes.append(make_reorder_node("in", "x", "xb", "NCHWc8")[0])
        add(make_sparse_conv_node("e", "xb", "a", w1, b1, layout="NCHWc8", **CLIP6))
        add(make_depthwise_node("d", "a", "b", wd, bd, layout="NCHWc8", **dw))
        add(make_sparse_conv_node("p", "b", "yb", w2, b2, layout="NCHWc8",
                                  residual="xb" if res else None))
        nodes.append(make_reorder_node("out", "yb", "y", "NCHW", channels=C)[0])
    else:
        add(make_sparse_conv_node("e", "x", "a", w1, b1, layout="NCHWc8", input_layout="NCHW",
                                  **CLIP6))
        add(make_depthwise_node("d", "a", "bb", wd, bd, layout="NCHWc8", **dw))
        nodes.append(make_reorder_node("mid", "bb", "b", "NCHW", channels=E)[0])
        add(make_sparse_conv_node("p", "b", "y", w2, b2, residual="x" if res else None))
    g = helper.make_graph(nodes, "block",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, H])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), opset_import()],
                             ir_version=9)


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", default="24,144,56,1", help="C,E,H,stride")
    ap.add_argument("--sparsity", type=float, default=0.85)
    ap.add_argument("--rounds", type=int, default=400)
    a = ap.parse_args()
    C, E, H, s = (int(v) for v in a.block.split(","))
    rng = np.random.default_rng(0)

    def pruned(M, K):
        w = rng.standard_normal((M, K)).astype(np.float32) * np.sqrt(2.0 / K)
        keep = rng.random((-(-M // 4), K)) >= a.sparsity
        return (w * np.repeat(keep, 4, axis=0)[:M]).reshape(M, K, 1, 1)

    w1, w2 = pruned(E, C), pruned(C, E)
    wd = rng.standard_normal((E, 1, 3, 3)).astype(np.float32)
    b1, bd, b2 = (rng.standard_normal(n).astype(np.float32) * 0.1 for n in (E, E, C))
    feeds = {"x": rng.standard_normal((1, C, H, H)).astype(np.float32)}
    with sessions.pinned(1) as pin:
        sess = []
        for lay in LAYOUTS:
            so = sessions.session_options(1, {**sessions.TIMING_CONFIG, **pin}, custom_ops=True)
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tempfile.gettempdir(), f"sk_block_{lay}")
            model = block_model(lay, C, E, H, s, w1, b1, wd, bd, w2, b2)
            sess.append(ort.InferenceSession(model.SerializeToString(), so,
                                             providers=["CPUExecutionProvider"]))
        outs = [x.run(None, feeds)[0] for x in sess]
        for o in outs[1:]:
            np.testing.assert_allclose(o, outs[0], rtol=1e-3, atol=1e-3)
        for _ in range(a.rounds):
            for x in sess:
                x.run(None, feeds)
    print(f"block {C} -> {E} -> {C} at {H}x{H}, stride {s}, 1x4 at {a.sparsity}; ms per node")
    for lay, x in zip(LAYOUTS, sess):
        med = {k: statistics.median(v[5:] or v) for k, (_, v) in sessions.node_times(x).items()}
        print(f"{lay:8s} total {sum(med.values()):.4f}  "
              + "  ".join(f"{k} {v:.4f}" for k, v in med.items()))


if __name__ == "__main__":
    main()
