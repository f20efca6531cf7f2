#!/usr/bin/env python3
"""PredictedConv against onnxruntime's Conv + Relu on single layers, as the fraction of zeros
after the ReLU grows (docs/predict.md).  A benchmark, not a test.

Random weights; a non-negative random input (a ReLU's output); per output channel the bias is
set to the quantile of the channel's pre-activation values that makes the wanted fraction of
its outputs zero.  No margin: `recall` says what the prediction keeps.  Both sides run in one
process, batch 1, pinned threads, interleaved medians.

    python benchmarks/bench_predicted.py                     # default layers and zeros
    python benchmarks/bench_predicted.py --zeros 0.5,0.9 --bits 4,8 --threads 1,2
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from sparsekit import bench as B
from sparsekit import sessions
from sparsekit.format import opset_import
from sparsekit.predict import im2col_pixels, make_predicted_conv_node
from sparsekit.timing import interleaved

ROOT = Path(__file__).resolve().parents[1]   # the repository: results/ and tests/data/

# (in channels, out channels, kernel, input height = width)
LAYERS = [(64, 64, 3, 56), (128, 128, 3, 28), (256, 256, 3, 14), (64, 256, 1, 56),
          (1024, 256, 1, 7)]


def models(C, M, k, H, zeros, bits, seed=0):
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((M, C, k, k)) / np.sqrt(C * k * k)).astype(np.float32)
    x = np.maximum(rng.standard_normal((1, C, H, H)), 0).astype(np.float32)
    pad = k // 2
    cols, _, _ = im2col_pixels(x, k, k, (1, 1), (pad,) * 4, (1, 1))
    b = (-np.quantile(cols[0] @ W.reshape(M, -1).T, zeros, axis=0)).astype(np.float32)
    X = helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))
    Y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    node, inits = make_predicted_conv_node("pc", "X", "Y", W, b, pads=(pad,) * 4, bits=bits)
    pred = helper.make_model(helper.make_graph([node], "g", [X], [Y], inits),
                             opset_imports=[helper.make_opsetid("", 17), opset_import()],
                             ir_version=9)
    dense = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["X", "W", "B"], ["C0"], pads=[pad] * 4),
         helper.make_node("Relu", ["C0"], ["Y"])], "g", [X], [Y],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "B")]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return pred, dense, x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zeros", default="0.5,0.75,0.9,0.95,0.99")
    ap.add_argument("--bits", default="4")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    zs = [float(v) for v in args.zeros.split(",")]
    rows = []
    for threads in [int(v) for v in args.threads.split(",")]:
        for (C, M, k, H) in LAYERS:
            for bits in [int(v) for v in args.bits.split(",")]:
                for z in zs:
                    pred, dense, x = models(C, M, k, H, z, bits)
                    feeds = {"X": x}
                    with sessions.pinned(threads) as cfg:
                        config = {**sessions.TIMING_CONFIG, **cfg}
                        ds = sessions.session(dense, threads, config, custom_ops=False)
                        ps = sessions.session(pred, threads, config)
                        want, got = ds.run(None, feeds)[0], ps.run(None, feeds)[0]
                        t = interleaved({"dense": lambda s=ds, f=feeds: s.run(None, f),
                                         "predicted": lambda s=ps, f=feeds: s.run(None, f)},
                                        warmup=3, runs=args.runs)
                    d, p = float(np.median(t["dense"])), float(np.median(t["predicted"]))
                    pos = want > 0
                    recall = float(((got > 0) & pos).sum() / max(1, pos.sum()))
                    row = {"layer": f"{C}->{M} {k}x{k} {H}x{H}", "threads": threads,
                           "bits": bits, "zeros": z, "dense_ms": d, "predicted_ms": p,
                           "speedup": d / p, "recall": recall}
                    rows.append(row)
                    print(f"{row['layer']:22s} t{threads} {bits}-bit zeros {z:4.0%}: dense "
                          f"{d:7.3f} ms  predicted {p:7.3f} ms  {d / p:5.2f}x  recall "
                          f"{recall:.4f}", flush=True)
    env = B.environment()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predicted_layers.json").write_text(json.dumps(
        {"date": stamp, "environment": env, "rows": rows}, indent=2))
    lines = [f"PredictedConv vs onnxruntime Conv + Relu, zeros set by the bias, no margin; "
             f"measured {stamp} on {env['cpu']}, kernels {env['isa']}, onnxruntime "
             f"{env['onnxruntime']}; `python benchmarks/bench_predicted.py`", "",
             "| layer | threads | bits | zeros | dense ms | PredictedConv ms | speedup | recall |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['threads']} | {r['bits']} | {r['zeros']:.0%} | "
              f"{r['dense_ms']:.3f} | {r['predicted_ms']:.3f} | {r['speedup']:.2f}x | "
              f"{r['recall']:.2%} |" for r in rows]
    (out / "predicted_layers.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
