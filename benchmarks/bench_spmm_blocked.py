#!/usr/bin/env python3
"""MobileNetV1's 1x1 convs at 1x4 sparsity: SparseConv on channel blocks against today's NCHW
SparseConv and onnxruntime's dense Conv, same weights.

    python -P benchmarks/bench_spmm_blocked.py [--sparsity 0.9] [--rounds 200] [--isa avx2]
        [--threads 1] [--chain 2] [--json FILE]

Per geometry (pixels x K x M), one process, the three sessions run round by round
(interleaved), medians of onnxruntime's profiler times (ms) of the conv under test:
  * ort dense: stock onnxruntime (graph level ALL) running Conv + ReLU on dense weights with the
    pruned zeros; MLAS's NCHWc transformer wraps it in ReorderInput/ReorderOutput, left out (the
    conv as it costs inside a network kept in NCHWc);
  * nchw op: the SparseConv node (bias + ReLU fused) on NCHW tensors, as `convert` emits today;
  * blocked op: the SparseConv node with layout = "NCHWc8" between Reorder nodes (left out).
With --chain R every session runs R such convs in a row (the followers K -> K... M -> M) and only
the first is reported, so a 2-thread pool is awake when it starts, as in a network.
A benchmark, not a test: absolute times drift on shared machines; compare columns of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import numpy as np
from onnx import TensorProto, helper

from sparsekit import _native, sessions
from sparsekit.format import opset_import
from sparsekit.pack import make_reorder_node, make_sparse_conv_node

# MobileNetV1's pointwise convs: (pixels, K, M)
MOBILENET_V1 = [(12544, 32, 64), (3136, 64, 128), (3136, 128, 128), (784, 128, 256),
                (784, 256, 256), (196, 256, 512), (196, 512, 512), (49, 512, 1024),
                (49, 1024, 1024)]
# MobileNetV2's distinct 1x1 convs (expand, project) up to 14x14
MOBILENET_V2 = [(12544, 32, 16), (12544, 16, 96), (3136, 96, 24), (3136, 24, 144),
                (3136, 144, 24), (784, 144, 32), (784, 32, 192), (784, 192, 32),
                (196, 192, 64), (196, 64, 384), (196, 384, 64), (196, 384, 96)]
NETS = {"mobilenet_v1": MOBILENET_V1, "mobilenet_v2": MOBILENET_V2}


def pruned_1x4(rng, M, K, sparsity):
    """[M, K, 1, 1] weight with blocks of 4 output rows at one input channel kept at random."""
    w = rng.standard_normal((M, K)).astype(np.float32) * np.sqrt(2.0 / K)
    keep = rng.random((-(-M // 4), K)) >= sparsity
    return (w * np.repeat(keep, 4, axis=0)[:M]).reshape(M, K, 1, 1)


def _chain(K, M, chain, rng, sparsity):
    """(in, out, weight, bias) of the conv under test and its followers (M -> M)."""
    convs, c = [], K
    for _ in range(chain):
        w = pruned_1x4(rng, M, c, sparsity)
        convs.append((c, M, w, rng.standard_normal(M).astype(np.float32) * 0.1))
        c = M
    return convs


def _model(nodes, K, H, W, inits, custom):
    g = helper.make_graph(nodes, "pw", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      [1, K, H, W])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    ops = [helper.make_opsetid("", 17)] + ([opset_import()] if custom else [])
    return helper.make_model(g, opset_imports=ops, ir_version=9)


def dense_model(K, H, W, convs):
    nodes, inits, cur = [], [], "x"
    for i, (_, _, w, b) in enumerate(convs):
        out = "y" if i == len(convs) - 1 else f"h{i}"
        nodes += [helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [f"c{i}"], name=f"c{i}",
                                   kernel_shape=[1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [out], name=f"r{i}")]
        inits += [helper.make_tensor(f"w{i}", TensorProto.FLOAT, w.shape, w.ravel()),
                  helper.make_tensor(f"b{i}", TensorProto.FLOAT, b.shape, b.ravel())]
        cur = out
    return _model(nodes, K, H, W, inits, False)


def nchw_model(K, H, W, convs):
    nodes, inits, cur = [], [], "x"
    for i, (_, _, w, b) in enumerate(convs):
        out = "y" if i == len(convs) - 1 else f"h{i}"
        n, ini = make_sparse_conv_node(f"c{i}", cur, out, w, b, activation="relu")
        nodes.append(n)
        inits += ini
        cur = out
    return _model(nodes, K, H, W, inits, True)


def blocked_model(K, H, W, convs):
    nodes, inits, cur = [make_reorder_node("to_c8", "x", "xb", "NCHWc8")[0]], [], "xb"
    for i, (_, _, w, b) in enumerate(convs):
        n, ini = make_sparse_conv_node(f"c{i}", cur, f"yb{i}", w, b, activation="relu",
                                       layout="NCHWc8")
        nodes.append(n)
        inits += ini
        cur = f"yb{i}"
    nodes.append(make_reorder_node("to_nchw", cur, "y", "NCHW", channels=convs[-1][1])[0])
    return _model(nodes, K, H, W, inits, True)


def node_median(sess, first_out):
    """Median profiler time (ms) of conv c0 (onnxruntime's names: c0, the Relu r0 if not fused,
    or, fused into an NCHWc conv, its output's name + _nchwc); reorders and followers left out."""
    return sum(statistics.median(v[5:] or v) for name, (_, v) in sessions.node_times(sess).items()
               if name.split("_")[0] in ("c0", "r0", first_out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--isa", default=None, help="kernel table of the sparsekit ops")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chain", type=int, default=1)
    ap.add_argument("--net", default="mobilenet_v1", choices=sorted(NETS))
    ap.add_argument("--only", default=None, help="comma-separated indices into the layer list")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    isa = a.isa or [i for i in _native.available_isas() if i != "ref"][-1]
    os.environ["SPARSEKIT_ISA"] = isa
    with sessions.pinned(a.threads) as pin:
        _run(a, isa, {**sessions.TIMING_CONFIG, **pin})


def _run(a, isa, config) -> None:
    import onnxruntime as ort

    layers = NETS[a.net]
    if a.only:
        layers = [layers[int(i)] for i in a.only.split(",")]
    print(f"isa {isa}, {a.threads} thread(s), 1x4 at {a.sparsity}, chain {a.chain}, "
          f"{a.rounds} interleaved rounds, medians in ms; load {os.getloadavg()[0]:.2f}")
    print(f"{'pixels x K x M':>18} {'ort dense':>10} {'nchw op':>8} {'blocked':>8} "
          f"{'nchw/blk':>9} {'dense/blk':>10}")
    rng = np.random.default_rng(0)
    rows, tot = [], [0.0, 0.0, 0.0]
    for P, K, M in layers:
        H = W = int(round(P ** 0.5))
        convs = _chain(K, M, a.chain, rng, a.sparsity)
        sess = []
        for model, custom in ((dense_model(K, H, W, convs), False),
                              (nchw_model(K, H, W, convs), True),
                              (blocked_model(K, H, W, convs), True)):
            so = sessions.session_options(a.threads, config, custom_ops=custom)
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tempfile.gettempdir(), f"sk_pw_prof{len(sess)}")
            sess.append(ort.InferenceSession(model.SerializeToString(), so,
                                             providers=["CPUExecutionProvider"]))
        feeds = {"x": rng.standard_normal((1, K, H, W)).astype(np.float32)}
        outs = [s.run(None, feeds)[0] for s in sess]
        for o in outs[1:]:  # same weights, same answer
            np.testing.assert_allclose(o, outs[0], rtol=1e-3, atol=1e-4)
        for _ in range(5):
            for s in sess:
                s.run(None, feeds)
        for _ in range(a.rounds):
            for s in sess:
                s.run(None, feeds)
        t = [node_median(s, "y" if a.chain == 1 else "h0") for s in sess]
        for i in range(3):
            tot[i] += t[i]
        print(f"{f'{P}x{K}x{M}':>18} {t[0]:10.4f} {t[1]:8.4f} {t[2]:8.4f} "
              f"{t[1] / t[2]:8.2f}x {t[0] / t[2]:9.2f}x")
        rows.append({"pixels": P, "K": K, "M": M, "ort_dense_ms": t[0], "nchw_op_ms": t[1],
                     "blocked_op_ms": t[2]})
    print(f"{'sum':>18} {tot[0]:10.4f} {tot[1]:8.4f} {tot[2]:8.4f} {tot[1] / tot[2]:8.2f}x "
          f"{tot[0] / tot[2]:9.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"isa": isa, "threads": a.threads, "sparsity": a.sparsity,
                       "rounds": a.rounds, "load": os.getloadavg()[0], "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
