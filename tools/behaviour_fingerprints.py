"""Fingerprints of what prune, convert and predict write on every zoo model, to pin behaviour
across a refactor: run it before (``--write before.json``) and after (``--compare before.json``);
any changed output model or report is listed.  Not a test (it takes minutes): a check for changes
that should move code without changing what it produces.

    python tools/behaviour_fingerprints.py --write /tmp/before.json
    python tools/behaviour_fingerprints.py --compare /tmp/before.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from sparsekit import convert, prune
from sparsekit import models
from sparsekit.calibration import load_calibration
from sparsekit.predict import plan_predicted

# the zoo's small variants (as tests/test_zoo.py) for the calibrated paths
SMALL = {
    "mobilenet_v1": dict(resolution=64, width=0.25),
    "mobilenet_v2": dict(resolution=64, width=0.25),
    "efficientnet_lite0": dict(resolution=64, width=0.25),
    "resnet50": dict(resolution=64, width=0.25),
    "bert_layer": dict(seq=16, hidden=64, heads=4, ffn=128),
    "lstm_lm": dict(hidden=32, vocab=50, seq=5),
}
MAGNITUDE = [("block", 0.9, {}), ("bank", 0.8, {}), ("unstructured", 0.7, {}),
             ("block", 0.5, {"block": "2x4"}), ("bank", 0.5, {"banks": 4})]
# report fields that depend on the clock or the temporary folder, not on the computation
_CLOCK = ("seconds", "_ms", "elapsed", "time")
_PLACE = ("calibration",)


def _digest(obj) -> str:
    if hasattr(obj, "SerializeToString"):
        data = obj.SerializeToString()
    else:
        data = json.dumps(_strip(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items()
                if not any(c in k for c in _CLOCK) and k not in _PLACE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _calibration(model, tmp: Path, name: str, samples: int = 24):
    """Deterministic random inputs in an .npz (ints in [0, 10) for token inputs)."""
    rng = np.random.default_rng(7)
    arrays = {}
    for vi in model.graph.input:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 7
                for d in t.shape.dim]
        shape = [samples] + dims[1:] if dims and dims[0] == 1 else dims
        if t.elem_type == 7:
            arrays[vi.name] = rng.integers(0, 10, size=shape).astype(np.int64)
        else:
            arrays[vi.name] = rng.standard_normal(shape).astype(np.float32)
    path = tmp / f"{name}.npz"
    np.savez(path, **arrays)
    return load_calibration(path, model, batch_size=8)


def fingerprints() -> dict:
    out = {}

    def record(case, model, report):
        out[f"{case} model"] = _digest(model)
        out[f"{case} report"] = _digest(report.to_dict() if hasattr(report, "to_dict") else
                                        [r.to_dict() for r in report])
        print(f"{case}: {out[f'{case} model']}", file=sys.stderr, flush=True)

    for name in models.names():
        dense = models.build(name)
        for pattern, sparsity, kw in MAGNITUDE:
            case = f"{name} {pattern} {sparsity} {kw}"
            pruned, report = prune(dense, pattern, sparsity, **kw)
            record(f"prune {case}", pruned, report)
            converted, creport = convert(pruned)
            record(f"convert {case}", converted, creport)
        if name.startswith("mobilenet"):
            pruned, _ = prune(dense, "block", 0.9)
            for kw in (dict(depthwise=False), dict(include="conv"), dict(exclude="conv_1"),
                       dict(max_density={"block4": 0.05})):
                converted, creport = convert(pruned, **kw)
                record(f"convert {name} block 0.9 {kw}", converted, creport)
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in SMALL.items():
            dense = models.build(name, **kw)
            calib = _calibration(dense, Path(tmp), name)
            for pattern, sparsity in (("block", 0.7), ("bank", 0.5)):
                for match, cc in (("dense", None), ("layer", None), ("dense", True)):
                    case = f"{name} small {pattern} {sparsity} match={match} cc={cc}"
                    pruned, report = prune(dense, pattern, sparsity, calibration=calib,
                                           match=match, channel_correction=cc)
                    record(f"prune {case}", pruned, report)
                    converted, creport = convert(pruned)
                    record(f"convert {case}", converted, creport)
            if name in ("mobilenet_v1", "mobilenet_v2", "resnet50"):
                pruned, _ = prune(dense, "block", 0.7)
                converted, _ = convert(pruned)
                predicted, rows = plan_predicted(converted, calib, min_zeros=0.0)
                record(f"predict {name} small", predicted, rows)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", type=Path)
    g.add_argument("--compare", type=Path)
    args = ap.parse_args()
    now = fingerprints()
    if args.write:
        args.write.write_text(json.dumps(now, indent=1) + "\n")
        print(f"{len(now)} fingerprints written to {args.write}")
        return 0
    before = json.loads(args.compare.read_text())
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    for k in changed:
        print(f"changed: {k}: {before.get(k)} -> {now.get(k)}")
    print(f"{len(now)} fingerprints, {len(changed)} changed")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
