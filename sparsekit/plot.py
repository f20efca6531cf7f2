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


def plot_sensitivity(report, path: str) -> None:
    """analyze: each layer's error curve (log scale) and the allocated sparsity per layer."""
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ls in report.layers:
        ax.plot(report.grid, [max(e, 1e-12) for e in ls.errors], marker=".", lw=1, label=ls.name)
    ax.set_yscale("log")
    ax.set_xlabel("sparsity of one layer")
    ax.set_ylabel("model output error (relative)")
    ax.set_title("sensitivity")
    if len(report.layers) <= 12:
        ax.legend(fontsize=7)
    xs = range(len(report.layers))
    bx.bar(xs, [ls.sparsity for ls in report.layers], color="#2a7ab9")
    bx.axhline(report.target, color="k", lw=0.8, ls="--", label=f"target {report.target:g} ({report.by})")
    bx.set_xticks(list(xs), [ls.name for ls in report.layers], rotation=90, fontsize=6)
    bx.set_ylabel("allocated sparsity")
    bx.set_ylim(0, 1)
    bx.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
