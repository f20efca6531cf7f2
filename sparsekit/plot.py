"""Plots for bench (matplotlib is an optional extra: pip install 'sparsekit[plot]')."""
from __future__ import annotations

from typing import List

from .errors import SparsekitError


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SparsekitError("--plot needs matplotlib: pip install 'sparsekit[plot]'") from None
    return plt


def plot_bench(report, path: str) -> None:
    """Median latency (with p90 whiskers) of dense vs sparse per thread count, speedup labelled."""
    plt = _pyplot()
    res = report.results
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = range(len(res))
    w = 0.38
    for off, key, color in ((-w / 2, "dense", "#8c8c8c"), (w / 2, "sparse", "#2a7ab9")):
        med = [getattr(r, key).median for r in res]
        err = [[0] * len(res), [getattr(r, key).p90 - getattr(r, key).median for r in res]]
        ax.bar([x + off for x in xs], med, w, yerr=err, label=f"{key} (median, p90)",
               color=color, capsize=3)
    for x, r in zip(xs, res):
        ax.text(x, max(r.dense.median, r.sparse.median) * 1.05, f"{r.speedup:.2f}x",
                ha="center")
    ax.set_xticks(list(xs), [f"{r.threads} thread(s)" for r in res])
    ax.set_ylabel("latency (ms)")
    ax.set_title(report.label or report.sparse_model)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(points: List, path: str, title: str = "") -> None:
    """Speedup against sparsity, one line per pattern and thread count; 1.0 marks break-even."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    keys = sorted({(p.pattern, p.threads) for p in points})
    for pattern, threads in keys:
        pts = sorted((p.sparsity, p.speedup) for p in points
                     if p.pattern == pattern and p.threads == threads)
        ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o",
                label=f"{pattern}, {threads} thread(s)")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("speedup vs dense onnxruntime")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
