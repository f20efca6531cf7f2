"""`make bench`: the zoo benchmark suite, dense onnxruntime vs sparsekit side by side.

Writes benchmarks/results/latest.md and latest.json (dated, with the machine).  Not a test:
it asserts nothing about speed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from sparsekit import bench as B
from sparsekit import sessions

SUITE = [  # (zoo model, pattern, sparsity, prune options)
    ("mobilenet_v1", "block", 0.90, {}),
    ("mobilenet_v1", "bank", 0.90, {}),
    ("mobilenet_v2", "block", 0.85, {}),
    ("efficientnet_lite0", "block", 0.85, {}),
    ("resnet50", "block", 0.80, {}),
    ("bert_layer", "bank", 0.80, {}),
    ("bert_layer", "bank", 0.80, {"block": "1x4"}),   # 1x4 blocks balanced per bank
    ("lstm_lm", "bank", 0.80, {}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=60.0, help="time cap per model and thread count")
    ap.add_argument("--burst", type=int, default=5,
                    help="runs of each model back to back per round (sparsekit.timing): the "
                         "speedup from runs 2..N (warm), the first reported as cold")
    ap.add_argument("--only", default=None, help="comma-separated zoo names")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    for name, pattern, sparsity, kw in SUITE:
        if args.only and name not in args.only.split(","):
            continue
        dense = B.zoo_model(name)
        # layouts chosen per chain by timing at the first thread count, as `bench --zoo` does
        pruned, sparse, _, crep = B.prepare(dense, pattern, sparsity, layout="auto",
                                            threads=threads[0], **kw)
        if kw.get("block"):
            pattern = f"{pattern}{kw['block']}"
        feeds = sessions.make_inputs(pruned)
        rep = B.bench(sparse, pruned, threads=threads, runs=args.runs, seconds=args.seconds,
                      feeds=feeds, profile=False, memory=False, burst=args.burst,
                      label=f"{name} {pattern} {sparsity:g}")
        for r in rep.results:
            rows.append({"model": name, "pattern": pattern, "sparsity": sparsity,
                         "threads": r.threads, "dense_ms": r.dense.median,
                         "sparse_ms": r.sparse.median, "speedup": r.speedup,
                         "q1": r.round_ratio_q1, "q3": r.round_ratio_q3, "runs": r.sparse.runs,
                         "burst": args.burst, "cold_speedup": r.cold_speedup,
                         "converted": crep.totals["converted"],
                         "depthwise": crep.totals["depthwise"]})
            print(f"{name:18s} {pattern:6s} {sparsity:.2f} {r.threads}t  dense {r.dense.median:8.3f} ms"
                  f"  sparse {r.sparse.median:8.3f} ms  {r.speedup:5.2f}x"
                  + (f"  (cold {r.cold_speedup:.2f}x)" if r.cold_speedup else ""), flush=True)
    env = B.environment()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps({"date": stamp, "environment": env,
                                                 "rows": rows}, indent=2))
    lines = [f"Measured {stamp} on {env['cpu']} ({env['cores']} cores), kernels {env['isa']}, "
             f"onnxruntime {env['onnxruntime']}; `make bench` (medians of interleaved rounds, "
             f"each model {args.burst} runs back to back per round: speedup from the warm runs, "
             "cold = the first run of each, after the other model).", "",
             "| model | pattern | sparsity | threads | dense ms | sparse ms | speedup | per-round q1-q3 "
             "| cold speedup |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['pattern']} | {r['sparsity']:.0%} | {r['threads']} | "
                     f"{r['dense_ms']:.2f} | {r['sparse_ms']:.2f} | **{r['speedup']:.2f}x** | "
                     f"{r['q1']:.2f}-{r['q3']:.2f} | "
                     + (f"{r['cold_speedup']:.2f}x |" if r["cold_speedup"] else "- |"))
    (out / "latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
