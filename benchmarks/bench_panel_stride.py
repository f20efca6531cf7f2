"""The blocked 1x4 kernel's panel stride: spmm_b4_blocked on one work item of each MobileNet and
ResNet-50 1x1 layer, for each panel stride, against the stride the SparseConv op picks.

    python -P benchmarks/bench_panel_stride.py [--isa avx512] [--rounds 3] [--repeats 200]

SparseConv (layout NCHWc8) splits a layer into work items of pixels (one item per image up
to 196 pixels) and reads X through panels of `panel_stride` pixels transposed out of the
channel blocks (docs/kernels.md).  Its rule (csrc/ort/work_split.h, which
`_native.blocked_panel` reports): an item that fits about 64 KiB of panel runs as one chunk, a
wider one in chunks of 48 pixels, 32 from 144 input channels on (expansions, M >= 4 K, keep
the one-chunk stride).  This times the kernel alone on the layer's widest item, best of
--repeats calls, the best of --rounds interleaved rounds.
"64 KiB" is the one-chunk stride, which every item used before the narrow chunks.
Writes benchmarks/results/panel_stride.md.  A benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from sparsekit import _native
from sparsekit.bench import environment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import random_blocks  # noqa: E402

# (pixels, K, M, sparsity): the 1x1 layers of MobileNetV2 at 85%, MobileNetV1 at 90% and
# ResNet-50's bottlenecks at 80%
LAYERS = [
    (12544, 32, 16, 0.85), (12544, 16, 96, 0.85), (3136, 96, 24, 0.85), (3136, 24, 144, 0.85),
    (3136, 144, 24, 0.85), (784, 144, 32, 0.85), (784, 32, 192, 0.85), (784, 192, 32, 0.85),
    (196, 192, 64, 0.85), (196, 64, 384, 0.85), (196, 384, 64, 0.85), (196, 576, 96, 0.85),
    (12544, 32, 64, 0.9), (3136, 64, 128, 0.9), (3136, 128, 128, 0.9), (784, 128, 256, 0.9),
    (784, 256, 256, 0.9), (196, 512, 512, 0.9), (49, 1024, 1024, 0.9),
    (3136, 256, 64, 0.8), (3136, 64, 256, 0.8), (784, 512, 128, 0.8), (784, 128, 512, 0.8),
    (196, 1024, 256, 0.8), (196, 256, 1024, 0.8), (49, 2048, 512, 0.8), (49, 512, 2048, 0.8),
]
STRIDES = [32, 48, 64, 80, 112, 176, 240, 496, 976]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", default=None, help="kernel table (default: the best available)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/panel_stride.md")
    a = ap.parse_args()
    isa = a.isa or _native.selected_isa()
    rng = np.random.default_rng(0)
    env = environment()
    head = (["layer (pixels x K x M @ sparsity)", "item px"] + [str(s) for s in STRIDES]
            + ["64 KiB", "op", "gain"])
    lines = [f"# Panel stride of the blocked 1x4 kernel ({isa})", "",
             f"{env['cpu']}, {env['cores']} cores, onnxruntime {env['onnxruntime']}; ms per call, "
             f"best of {a.repeats} calls on the layer's widest work item, best of {a.rounds} "
             "rounds.  `64 KiB`: the one-chunk stride for the layer's K; `op`: the stride the op "
             "uses for that item; gain = 64 KiB / op.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    print(" ".join(f"{h:>8}" for h in head))
    for P, K, M, sp in LAYERS:
        gp, ki, vals = random_blocks(rng, M, K, 4, sp)
        n, op, wide = _native.blocked_panel(isa, P, K, M)  # the op's own choice
        x = rng.standard_normal((K, n)).astype(np.float32)
        strides = sorted(set(STRIDES) | {wide, op})
        best = {s: float("inf") for s in strides}
        for _ in range(a.rounds):  # interleaved: every stride once per round
            for s in strides:
                t = _native.time_spmm_blocked(isa, M, gp, ki, vals, x, s, a.repeats)
                best[s] = min(best[s], t * 1e3)
        row = [f"{P}x{K}x{M} @ {sp}", str(n)] + [f"{best[s]:.4f}" for s in STRIDES]
        row += [f"{best[wide]:.4f} ({wide})", f"{best[op]:.4f} ({op})",
                f"{best[wide] / best[op]:.2f}x"]
        print(" ".join(f"{c:>8}" for c in row))
        lines.append("| " + " | ".join(row) + " |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
