#!/usr/bin/env python3
"""Seconds per fine-tuning step of ImageNet MobileNetV2 at several training crop sizes.

What a step costs on this machine decides how many steps a time budget buys, so the accuracy
study (benchmarks/accuracy_finetune.py) can run a step budget on shared cores and still say what
it is in minutes on an idle machine. Each size runs `sparsekit.finetune` twice (a few steps, then
20 more, learning rate 0 so nothing changes between runs); the difference divided by 20 is the
per-step time without the set-up (teacher session, photo decoding, evaluation). Run it with
nothing else on the cores (`uptime` is printed with the result).

    python benchmarks/finetune_step_time.py --sizes 224,160,128
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from sparsekit.finetune import finetune
from sparsekit.models import photos, pretrained
from sparsekit.prune import prune


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="224,160,128", help="training crop sides, pixels")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--photos", type=int, default=65)
    ap.add_argument("--steps", type=int, default=20, help="steps timed per size (after 3 set-up steps)")
    args = ap.parse_args()
    dense = pretrained.mobilenet_v2_imagenet()
    student, _ = prune(dense, "block", 0.5)        # the weights do not change a step's cost
    train_dir = Path(tempfile.mkdtemp(prefix="sk_steps_"))
    photos.export("train", train_dir, limit=args.photos)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        took = []
        for steps in (3, 3 + args.steps):
            _, rep = finetune(student, dense, train_dir, preprocess="imagenet", steps=steps,
                              batch_size=args.batch_size, lr=0.0, holdout=0.0,
                              train_size=None if size == 224 else size)
            took.append(rep.seconds)
        rows.append({"size": size, "batch_size": args.batch_size,
                     "seconds_per_step": round((took[1] - took[0]) / args.steps, 3)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
