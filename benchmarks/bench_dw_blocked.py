#!/usr/bin/env python3
"""Depthwise convs of the zoo models: sparsekit's kernels against onnxruntime's NCHWc one.

    python -P benchmarks/bench_dw_blocked.py [--zoo mobilenet_v1,mobilenet_v2,efficientnet_lite0]
        [--rounds 200] [--isa avx2] [--threads 2]

For every distinct depthwise geometry (C, H, W, k, stride, pads) of the models, one process,
interleaved round by round, medians (ms); the onnxruntime sessions with --threads (default 1),
the kernel columns single-threaded:
  * ort nchwc: onnxruntime (graph level ALL) running the conv + ReLU6 alone; its NCHWc transformer
    wraps it in ReorderInput/ReorderOutput, which are left out: the figure is the profiler's
    time of the conv node(s) themselves, what the conv costs inside a network kept in NCHWc;
  * blocked: `dwconv_blocked` on the same data in 8-channel blocks (kernel call, no reorders);
  * nchw: what DepthwiseConv runs today on NCHW planes (`dwconv_multi` for planes of <= 1024
    pixels where the ISA vectorises over channels, else `dwconv` plane by plane);
  * op: the DepthwiseConv node with layout = "NCHWc8" in onnxruntime (between two Reorder
    nodes), the profiler's time of that node: the kernel plus the op's overhead.
With --chain R both sessions run R convs in a row (the one under test, then 3x3 stride-1 ones)
and only the first is reported: with 2 threads a lone node measures the pool's wake-up (the
worker is asleep when the node starts), not the conv.
A benchmark, not a test: absolute times drift on shared machines; compare columns of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper

from sparsekit import _native
from sparsekit import bench as B
from sparsekit import sessions

SMALL_PLANE = 1024  # csrc/ort/depthwise.cpp: dwconv_multi up to this many input pixels


def depthwise_layers(model: onnx.ModelProto):
    """(C, H, W, k, stride, pads) of each depthwise Conv, in order, with repeats."""
    m = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.input):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    inits = {i.name: i for i in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        w = inits.get(n.input[1])
        xs = shapes.get(n.input[0])
        if w is None or not xs or len(xs) != 4:
            continue
        C = xs[1]
        if a.get("group", 1) != C or C == 1 or w.dims[1] != 1:
            continue
        k = int(w.dims[2])
        s = int(a.get("strides", [1, 1])[0])
        pads = tuple(int(p) for p in a.get("pads", [0, 0, 0, 0]))
        out.append((C, xs[2], xs[3], k, s, pads))
    return out


def _geometries(k, s, pads, chain):
    """The conv under test, then chain - 1 followers (3x3, stride 1, pad 1) on its output."""
    return [(k, s, tuple(pads))] + [(3, 1, (1, 1, 1, 1))] * (chain - 1)


def ort_model(C, H, W, k, s, pads, w, b, chain=1):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])
    nodes, inits, cur = [], [], "x"
    inits += [helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]),
              helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])]
    for i, (kk, ss, pp) in enumerate(_geometries(k, s, pads, chain)):
        wi = w if i == 0 else np.full((C, 1, kk, kk), 0.1, np.float32)
        nodes += [helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [f"c{i}"], group=C,
                                   kernel_shape=[kk, kk], strides=[ss, ss], pads=list(pp)),
                  helper.make_node("Clip", [f"c{i}", "lo", "hi"], [f"h{i}"])]
        inits += [helper.make_tensor(f"w{i}", TensorProto.FLOAT, wi.shape, wi.ravel()),
                  helper.make_tensor(f"b{i}", TensorProto.FLOAT, b.shape, b.ravel())]
        cur = f"h{i}"
    y = helper.make_tensor_value_info(cur, TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "dw", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def blocked_op_model(C, H, W, k, s, pads, w, b, chain=1):
    from sparsekit.pack import make_depthwise_node, make_reorder_node
    from sparsekit.format import opset_import

    nodes, inits, cur = [make_reorder_node("to_c8", "x", "xb0", "NCHWc8")[0]], [], "xb0"
    for i, (kk, ss, pp) in enumerate(_geometries(k, s, pads, chain)):
        wi = w if i == 0 else np.full((C, 1, kk, kk), 0.1, np.float32)
        dw, ini = make_depthwise_node(f"c{i}", cur, f"xb{i + 1}", wi, b, strides=(ss, ss),
                                      pads=pp, activation="clip", clip_min=0.0, clip_max=6.0,
                                      layout="NCHWc8")
        nodes.append(dw)
        inits += ini
        cur = f"xb{i + 1}"
    nodes.append(make_reorder_node("to_nchw", cur, "y", "NCHW", channels=C)[0])
    g = helper.make_graph(nodes, "dwb",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), opset_import()],
                             ir_version=9)


def node_medians(sess):
    """Median profiler time (ms) of the conv under test: the nodes named c0 / c0_nchwc and its
    Clip (h0, when onnxruntime did not fuse it); reorders and chain followers left out."""
    return sum(statistics.median(v[5:] or v) for name, (_, v) in sessions.node_times(sess).items()
               if name.split("_")[0] in ("c0", "h0"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="mobilenet_v1,mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--isa", default=None,
                    help="kernel table, for the kernel timings and the op (default: the best)")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads of both onnxruntime sessions (the kernel columns "
                    "are single-threaded)")
    ap.add_argument("--chain", type=int, default=1,
                    help="follow the conv under test by chain - 1 more (3x3 s1) in both sessions, "
                    "so a 2-thread pool stays awake between nodes as in a network; only the "
                    "first conv is reported")
    ap.add_argument("--json", default=None, help="write the rows here")
    a = ap.parse_args()

    isa = a.isa or [i for i in _native.available_isas() if i != "ref"][-1]
    os.environ["SPARSEKIT_ISA"] = isa  # the op's sessions use the same kernel table
    with sessions.pinned(a.threads) as pin:  # as sparsekit bench runs them
        _run(a, isa, {**sessions.TIMING_CONFIG, **pin})


def _run(a, isa, config) -> None:
    import onnxruntime as ort

    seen, layers = set(), []
    for name in a.zoo.split(","):
        for g in depthwise_layers(B.zoo_model(name)):
            if g not in seen:
                seen.add(g)
                layers.append((name, g))
    rng = np.random.default_rng(0)
    print(f"isa {isa}, {a.threads} thread(s) (kernel columns: 1), {a.rounds} interleaved rounds, "
          f"medians in ms; load "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'model':>18} {'C x H x W k/s pads':>26} {'ort nchwc':>10} {'blocked':>8} "
          f"{'nchw':>8} {'op':>8} {'ort/blk':>8} {'ort/op':>7}")
    rows = []
    tot = [0.0, 0.0, 0.0, 0.0]
    for name, (C, H, W, k, s, pads) in layers:
        OH = (H + pads[0] + pads[2] - k) // s + 1
        OW = (W + pads[1] + pads[3] - k) // s + 1
        x = rng.standard_normal((C, H, W)).astype(np.float32)
        w = rng.standard_normal((C, 1, k, k)).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32)
        sess = []
        for model, custom in ((ort_model(C, H, W, k, s, pads, w, b, a.chain), False),
                              (blocked_op_model(C, H, W, k, s, pads, w, b, a.chain), True)):
            so = sessions.session_options(a.threads, config, custom_ops=custom)
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tempfile.gettempdir(), "sk_dw_prof")
            sess.append(ort.InferenceSession(model.SerializeToString(), so,
                                             providers=["CPUExecutionProvider"]))
        feeds = {"x": x[None]}
        w3 = w[:, 0]
        multi = H * W <= SMALL_PLANE and _native_multi_lanes(isa) > 1
        tb, tn = [], []
        for _ in range(5):
            for se in sess:
                se.run(None, feeds)
        for _ in range(a.rounds):
            for se in sess:
                se.run(None, feeds)
            tb.append(_native.time_dwconv(isa, x, w3, s, pads[0], pads[1], OH, OW, 1,
                                          blocked=True))
            tn.append(_native.time_dwconv(isa, x, w3, s, pads[0], pads[1], OH, OW, 1,
                                          multi=multi))
        t_ort = node_medians(sess[0])
        t_op = node_medians(sess[1])
        t_b = statistics.median(tb) * 1e3
        t_n = statistics.median(tn) * 1e3
        for i, v in enumerate((t_ort, t_b, t_n, t_op)):
            tot[i] += v
        geo = f"{C}x{H}x{W} {k}/{s} {','.join(map(str, pads))}"
        print(f"{name:>18} {geo:>26} {t_ort:10.4f} {t_b:8.4f} {t_n:8.4f} {t_op:8.4f} "
              f"{t_ort / t_b:7.2f}x {t_ort / t_op:6.2f}x")
        rows.append({"model": name, "C": C, "H": H, "W": W, "k": k, "stride": s,
                     "pads": list(pads), "ort_nchwc_ms": t_ort, "blocked_ms": t_b,
                     "nchw_ms": t_n, "op_ms": t_op})
    print(f"{'sum of distinct layers':>45} {tot[0]:10.4f} {tot[1]:8.4f} {tot[2]:8.4f} "
          f"{tot[3]:8.4f} {tot[0] / tot[1]:7.2f}x {tot[0] / tot[3]:6.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"isa": isa, "rounds": a.rounds, "rows": rows}, f, indent=1)


def _native_multi_lanes(isa: str) -> int:
    # what DepthwiseConv decides from the table: avx2 / avx512 vectorise small planes over
    # channels (dw_multi_lanes > 1), ref and neon go plane by plane
    return 1 if isa in ("ref", "neon") else 8


if __name__ == "__main__":
    main()
