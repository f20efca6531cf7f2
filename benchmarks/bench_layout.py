#!/usr/bin/env python3
"""Whole models, four ways side by side: dense onnxruntime, sparsekit with NCHW activations
(`convert --layout NCHW`), sparsekit with its chains in 8-channel blocks (`--layout NCHWc8`),
and the same without merging expansions into their depthwise convs (`--no-merge`).

    python -P benchmarks/bench_layout.py [--zoo mobilenet_v1:0.9,mobilenet_v2:0.85,...]
        [--threads 1,2] [--runs 60] [--seconds 60] [--burst 5]

Each zoo model is pruned with 1x4 blocks at its sparsity and converted both ways; the three
sessions get the same threads and pinning (sessions.time_models' settings) and run
interleaved round by round, each --burst times back to back; medians of the warm runs (the
first of each burst, after another session, left out: sparsekit.timing).
Writes benchmarks/results/layout.md and layout.json.
A benchmark, not a test: it asserts nothing about speed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np

from sparsekit import bench as B
from sparsekit import sessions
from sparsekit.convert import convert
from sparsekit.prune import prune
from sparsekit.timing import interleaved

DEFAULT_ZOO = "mobilenet_v1:0.9,mobilenet_v2:0.85,efficientnet_lite0:0.85,resnet50:0.8"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default=DEFAULT_ZOO, help="name:sparsity,...")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=60.0, help="cap per model and thread count")
    ap.add_argument("--burst", type=int, default=5,
                    help="runs of each model back to back per round; medians of runs 2..N")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    rows = []
    for item in args.zoo.split(","):
        name, sparsity = item.split(":")
        pruned, _ = prune(B.zoo_model(name), pattern="block", sparsity=float(sparsity))
        nchw, _ = convert(pruned, layout="NCHW")
        blocked, rep = convert(pruned, layout="NCHWc8")
        unmerged, _ = convert(pruned, layout="NCHWc8", merge=False)
        merged = sum(len(c.fused) for c in rep.chains)
        reorders = sum(n.op_type == "Reorder" for n in blocked.graph.node)
        feeds = sessions.make_inputs(pruned)
        for t in (int(x) for x in args.threads.split(",")):
            with sessions.pinned(t) as cfg:
                config = {**sessions.TIMING_CONFIG, **cfg}
                s = {"dense": sessions.session(pruned, t, config, custom_ops=False),
                     "nchw": sessions.session(nchw, t, config),
                     "blocked": sessions.session(blocked, t, config),
                     "unmerged": sessions.session(unmerged, t, config)}
                ms = interleaved({k: (lambda v=v, f=feeds: v.run(None, f)) for k, v in s.items()},
                                 warmup=5, runs=args.runs, seconds=args.seconds,
                                 burst=args.burst)
                del s
            med = {k: float(np.median(v)) for k, v in ms.items()}
            row = {"model": name, "sparsity": float(sparsity), "threads": t,
                   "chains": len(rep.chains), "reorders": reorders, "merged": merged,
                   "runs": len(ms["dense"]),
                   **{f"{k}_ms": v for k, v in med.items()},
                   "nchw_speedup": med["dense"] / med["nchw"],
                   "blocked_speedup": med["dense"] / med["blocked"],
                   "blocked_vs_nchw": med["nchw"] / med["blocked"],
                   "unmerged_speedup": med["dense"] / med["unmerged"],
                   "merged_vs_unmerged": med["unmerged"] / med["blocked"]}
            rows.append(row)
            print(f"{name:18s} {sparsity} {t}t dense {med['dense']:7.3f}  nchw {med['nchw']:7.3f} "
                  f"({row['nchw_speedup']:.2f}x)  blocked {med['blocked']:7.3f} "
                  f"({row['blocked_speedup']:.2f}x)  blocked/nchw {row['blocked_vs_nchw']:.3f}x  "
                  f"unmerged {med['unmerged']:7.3f} ({row['unmerged_speedup']:.2f}x)  "
                  f"merged/unmerged {row['merged_vs_unmerged']:.3f}x",
                  flush=True)
    env = B.environment()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "layout.json").write_text(json.dumps({"date": stamp, "environment": env,
                                                 "rows": rows}, indent=1) + "\n")
    lines = [f"# Activation layout: dense onnxruntime vs sparsekit NCHW vs NCHWc8, merged or not "
             f"({stamp})", "",
             f"{env}", "", "`python -P benchmarks/bench_layout.py` (1x4 blocks; medians of "
             f"interleaved rounds, each session {args.burst} runs back to back per round, the "
             "first left out; same threads)", "",
             "| model | sparsity | threads | chains | Reorders | merged | dense ms | NCHW ms | "
             "NCHWc8 ms | unmerged ms | NCHW speedup | NCHWc8 speedup | NCHWc8 vs NCHW | "
             "unmerged speedup | merged vs unmerged |", "|---" * 15 + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['sparsity']:.0%} | {r['threads']} | {r['chains']} | "
                     f"{r['reorders']} | {r['merged']} | {r['dense_ms']:.3f} | {r['nchw_ms']:.3f} | "
                     f"{r['blocked_ms']:.3f} | {r['unmerged_ms']:.3f} | {r['nchw_speedup']:.2f}x | "
                     f"{r['blocked_speedup']:.2f}x | {r['blocked_vs_nchw']:.3f}x | "
                     f"{r['unmerged_speedup']:.2f}x | {r['merged_vs_unmerged']:.3f}x |")
    (out / "layout.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
