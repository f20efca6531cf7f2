#!/usr/bin/env python3
"""Accuracy study on real labelled data: the digits CNN (tests/data) pruned in one shot.

For each pattern and sparsity: test top-1 (600 held-out images) after magnitude pruning, after
reconstruction (prune --calibration; also with match="layer", SparseGPT's own target, as an
ablation) and after reconstruction with per-layer sparsities from analyze (same global target,
counted in parameters); each reconstruction without and with channel correction ("+ cc").
Calibration: the first 256 training images, labels unused.

    python benchmarks/accuracy_digits.py            # writes benchmarks/results/accuracy_digits.{md,json}
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from sparsekit.analyze import analyze
from sparsekit.calibration import Calibration
from sparsekit.prune import prune

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
PATTERNS = ("block", "bank", "unstructured")
SPARSITIES = (0.5, 0.7, 0.9)
# the reconstructions measured, (match, per-layer sparsities from analyze), each without and
# with channel correction (key + "_cc")
METHODS = {"reconstruction_layer": ("layer", False), "reconstruction": ("dense", False),
           "reconstruction_allocated": ("dense", True)}


def top1(model, x, y) -> float:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return float(np.mean(sess.run(None, {"input": x})[0].argmax(1) == y))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration", type=int, default=256, help="training images used (unlabelled)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy_digits"))
    args = ap.parse_args()
    d = np.load(DATA / "digits.npz")
    x = d["images"].astype(np.float32)[:, None] / 16.0
    train_x = x[d["train_idx"]]
    test_x, test_y = x[d["test_idx"]], d["labels"][d["test_idx"]].astype(np.int64)
    model = onnx.load(DATA / "digits_cnn.onnx")
    cal = Calibration({"input": train_x[:args.calibration]}, 64, "digits train[:%d]" % args.calibration)
    dense = top1(model, test_x, test_y)
    rows = []
    for pattern in PATTERNS:
        for s in SPARSITIES:
            t0 = time.perf_counter()
            r = {"pattern": pattern, "sparsity": s}
            r["magnitude"] = top1(prune(model, pattern, s)[0], test_x, test_y)
            rep = analyze(model, cal, s, pattern=pattern, samples=256)
            r["allocation"] = {ls.name: round(ls.sparsity, 3) for ls in rep.layers}
            for key, (match, allocated) in METHODS.items():
                for cc in (False, True):
                    pruned, _ = prune(model, pattern, s, calibration=cal, match=match, channel_correction=cc,
                                      recipe=rep.recipe() if allocated else None)
                    r[key + ("_cc" if cc else "")] = top1(pruned, test_x, test_y)
            r["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(r)
            print(f"{pattern:12s} {s:.1f}  magnitude {r['magnitude']:.3f}  " + "  ".join(
                f"{k} {r[k]:.3f} / +cc {r[k + '_cc']:.3f}" for k in METHODS) + f"  {r['allocation']}",
                flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "onnxruntime": ort.__version__, "dense_top1": dense, "test_images": int(len(test_y)),
            "calibration_images": args.calibration}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"Digits CNN (tests/data/digits_cnn.onnx), test top-1 on {len(test_y)} held-out images; "
             f"dense {dense:.3f}. Calibration: {args.calibration} training images. "
             f"{meta['date']}, onnxruntime {meta['onnxruntime']}.", "",
             "| pattern | sparsity | magnitude | reconstruction (match=layer) | + channel correction | "
             "reconstruction | + channel correction | reconstruction + allocation | + channel correction | "
             "allocation (conv2, conv3, fc1, fc2) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pattern']} | {r['sparsity']:.0%} | {r['magnitude']:.3f} | "
                     + "".join(f"{r[k]:.3f} | {r[k + '_cc']:.3f} | " for k in METHODS)
                     + ", ".join(f"{v:.2f}" for v in r["allocation"].values()) + " |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}.md/.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
