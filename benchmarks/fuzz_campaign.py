"""The full fuzz campaign of the custom-op library (issue 21): N mutated single-op models across
SparseConv, SparseGemm, DepthwiseConv, PredictedConv, SparseLSTM and SparseGRU (the kinds and
outcomes are tests/fuzz_models.py's; tests/test_fuzz_subprocess.py runs a sample of it in CI),
each in a worker subprocess, with counts per op and outcome.  Exit status 1 when any case
crashed, hung, or ran and disagreed with its reference.

    python benchmarks/fuzz_campaign.py --cases 4000 --seed 1
    python benchmarks/fuzz_campaign.py --cases 2000 --isa ref      # or SPARSEKIT_ISA=ref
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzz_models import FAILURES, ISSUE_CASES, OPS, run_in_workers, sample_cases  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=600, help="cases in all (split over the ops)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--isa", default=os.environ.get("SPARSEKIT_ISA"),
                    help="kernel ISA (SPARSEKIT_ISA), e.g. ref, avx2, avx512")
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    ap.add_argument("--batch", type=int, default=200, help="cases per worker process")
    ap.add_argument("--json", type=Path, default=None, help="write every case's result here")
    args = ap.parse_args()
    ops = [o for o in args.ops.split(",") if o]
    unknown = [o for o in ops if o not in OPS]
    if unknown or args.cases < 1:
        ap.error(f"unknown op(s) {unknown}" if unknown else "--cases must be >= 1")
    per_op = max(1, args.cases // len(ops))
    cases = sample_cases(per_op, args.seed, ops=ops) + [c for c in ISSUE_CASES if c["op"] in ops]
    t0 = time.perf_counter()
    results = []
    for i in range(0, len(cases), args.batch):
        results += run_in_workers(cases[i:i + args.batch], isa=args.isa)
        print(f"\r{len(results)}/{len(cases)} cases", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    counts = Counter((r["op"], r["outcome"]) for r in results)
    outcomes = sorted({o for _, o in counts})
    print(f"{len(results)} cases, seed {args.seed}, ISA {args.isa or 'default'}, "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'op':<15}" + "".join(f"{o:>18}" for o in outcomes))
    for op in ops:
        print(f"{op:<15}" + "".join(f"{counts[(op, o)]:>18}" for o in outcomes))
    bad = [r for r in results if r["outcome"] in FAILURES]
    for r in bad:
        print(f"FAILED {r['id']}: {r['outcome']}: {r['detail']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
