#!/usr/bin/env python3
"""How much of a network's Conv -> ReLU/Clip(0, hi) output is zero on real inputs, and how well
PredictedConv predicts it (docs/predict.md).  A study, not a test.

Per eligible layer (sparsekit.predict.rewrite_predicted): the fraction of outputs that are 0 in
the dense model, the prediction's recall (positive outputs predicted positive) and precision
(predicted positive outputs that are positive), both on the layer's real input captured from
the dense model; whole model: top-1 agreement with the dense model when every eligible layer
is a PredictedConv; per layer: PredictedConv vs onnxruntime's Conv + activation, 1 thread,
batch 1, interleaved medians.

    python benchmarks/feature_sparsity.py --model digits          # trained CNN, 600 test images
    python benchmarks/feature_sparsity.py --model mobilenet_v2 --images 64   # needs torch + weights
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sparsekit  # noqa: E402
from sparsekit import bench as B  # noqa: E402
from sparsekit.graph import get_attr  # noqa: E402
from sparsekit.predict import predicted_mask, rewrite_predicted  # noqa: E402


def load(name: str, images: int):
    if name == "digits":
        from models import digits
        d = digits.load_data(ROOT / "tests" / "data" / "digits.npz")
        return onnx.load(str(ROOT / "tests" / "data" / "digits_cnn.onnx")), d["test_x"], d["test_y"]
    from models import natural_images, pretrained
    return pretrained.mobilenet_v2_imagenet(), natural_images.crops("evaluation", images), None


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


def dense_layer(W, b, attrs, act, hi, xin, yout):
    conv = helper.make_node("Conv", [xin, "W", "B"], ["c0"], **attrs)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "B")]
    if act == "relu":
        a = helper.make_node("Relu", ["c0"], [yout])
    else:
        a = helper.make_node("Clip", ["c0", "lo", "hi"], [yout])
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(hi, np.float32), "hi")]
    return [conv, a], inits


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["digits", "mobilenet_v2"], default="digits")
    ap.add_argument("--images", type=int, default=64, help="evaluation crops (mobilenet_v2)")
    ap.add_argument("--runs", type=int, default=20, help="timed rounds per layer")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    model, x, labels = load(args.model, args.images)
    name = model.graph.input[0].name
    pm, rows = rewrite_predicted(model)
    layers = [r for r in rows if r.replaced]
    # dense: every replaced layer's input and output
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    tensors = sorted({t for r in layers for t in (r.input, r.output)})
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
        pred = predicted_mask(W, b, xin, st, pd, dl)
        pos = ydense > 0
        recall = float((pred & pos).sum() / max(1, pos.sum()))
        precision = float((pred & pos).sum() / max(1, pred.sum()))
        # speed, batch 1: PredictedConv vs Conv + activation in onnxruntime
        layer_inits = [inits[i] for i in node.input[1:] if i]
        sp = single(node, layer_inits, (1,) + xin.shape[1:], list(pm.opset_import))
        attrs = dict(strides=st, pads=pd, dilations=dl)
        dn, di = dense_layer(W, b, attrs, act, hi, node.input[0], node.output[0])
        g = helper.make_graph(dn, "dense", list(sp.graph.input), list(sp.graph.output), di)
        dm = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        feeds = {node.input[0]: xin[:1]}
        with B.pinned(1) as cfg:
            ds, ss = B.dense_session(dm, 1, config=cfg), B.sparse_session(sp, 1, config=cfg)
            t = B.interleaved({"dense": lambda ds=ds, f=feeds: ds.run(None, f),
                               "predicted": lambda ss=ss, f=feeds: ss.run(None, f)},
                              warmup=3, runs=args.runs)
        dms, pms = float(np.median(t["dense"])), float(np.median(t["predicted"]))
        results.append({"layer": r.name, "weight": r.weight_shape, "activation": act,
                        "zeros": float(1 - pos.mean()), "predicted_positive": float(pred.mean()),
                        "recall": recall, "precision": precision, "dense_ms": dms,
                        "predicted_ms": pms, "speedup": dms / pms})
        print(f"{r.name:28s} zeros {1 - pos.mean():5.1%}  recall {recall:6.2%}  "
              f"precision {precision:6.2%}  dense {dms:7.3f} ms  predicted {pms:7.3f} ms "
              f"({dms / pms:4.2f}x)", flush=True)
    env = B.environment()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary = {"model": args.model, "images": int(len(x)), "top1_agreement": agree,
               "accuracy": acc, "layers": results, "date": stamp, "environment": env,
               "eligible": len(layers), "convs": len(rows)}
    print(f"top-1 agreement with the dense model: {agree:.2%}" +
          (f"; test accuracy dense {acc['dense']:.3f}, predicted {acc['predicted']:.3f}" if acc else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"feature_sparsity_{args.model}.json").write_text(json.dumps(summary, indent=2))
    lines = [f"{args.model}: {len(x)} images, {len(layers)} of {len(rows)} convs eligible; "
             f"measured {stamp} on {env['cpu']}, kernels {env['isa']}, onnxruntime "
             f"{env['onnxruntime']}; `python benchmarks/feature_sparsity.py --model {args.model}`",
             "", f"Top-1 agreement with the dense model, every eligible layer predicted: "
             f"**{agree:.2%}**" + (f" (test accuracy dense {acc['dense']:.3f}, predicted "
                                   f"{acc['predicted']:.3f})" if acc else ""), "",
             "| layer | weight | zeros | recall | precision | dense ms | PredictedConv ms | speedup |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['layer']} | {'x'.join(map(str, r['weight']))} | {r['zeros']:.1%} | "
                     f"{r['recall']:.2%} | {r['precision']:.2%} | {r['dense_ms']:.3f} | "
                     f"{r['predicted_ms']:.3f} | {r['speedup']:.2f}x |")
    (out / f"feature_sparsity_{args.model}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
