"""bench: how much faster did it get, on this machine?  Dense vs sparse, side by side, one process.

The dense reference runs in stock onnxruntime, the sparse model with sparsekit's ops, with the same
thread count and pinning, interleaved round by round after a warm-up (`sparsekit.sessions`).
Reported: median / p90 / min latency of each, the speedup (dense median / sparse median) with the
spread of per-round ratios, the top ops by time from onnxruntime's profiler, the ISA the kernels
chose, onnxruntime's version, file sizes and peak memory.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import platform
import resource
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import onnx

from . import _native, models
from .convert import convert
from .errors import SparsekitError
from .io import as_model
from .prune import prune
from .sessions import TIMING_CONFIG, graph_inputs, make_inputs, node_times, session, time_models
from .timing import Stats, ratio
from .version import __version__

DEVICES = ("cpu",)


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise SparsekitError(f"device {device!r} is not supported by this build; "
                             f"supported: {', '.join(DEVICES)}")


def top_ops(sess, feeds, runs: int = 5, top: int = 8) -> List[dict]:
    """Run a profiling session and sum node times by op type (ms per run), largest first."""
    for _ in range(runs):
        sess.run(None, feeds)
    by_op: Dict[str, float] = {}
    count: Dict[str, int] = {}
    for op, times in node_times(sess).values():
        by_op[op] = by_op.get(op, 0.0) + sum(times) / runs
        count[op] = count.get(op, 0) + 1
    rows = [{"op": k, "ms": v, "nodes": count[k]} for k, v in by_op.items()]
    rows.sort(key=lambda r: -r["ms"])
    return rows[:top]


def _vm_hwm() -> int:
    """Peak resident bytes of this process image.  Not ru_maxrss: Linux carries the parent's
    high-water mark across fork+exec into it, so every child would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss_child(kind: str, model_bytes: bytes, feeds, threads, queue) -> None:
    try:
        m = onnx.load_from_string(model_bytes)
        sess = session(m, threads, TIMING_CONFIG, custom_ops=kind != "dense")
        sess.run(None, feeds)
        queue.put(_vm_hwm())
    except Exception as e:  # reported, not raised: memory is a side figure
        queue.put(f"error: {e}")


def peak_memory(kind: str, model: onnx.ModelProto, feeds, threads) -> Optional[int]:
    """Peak resident bytes of a fresh process that loads the model and runs it once."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_rss_child, args=(kind, model.SerializeToString(), feeds, threads, q))
    p.start()
    try:
        v = q.get(timeout=300)
    except Exception:
        v = None
    p.join(timeout=10)
    return v if isinstance(v, int) else None


@dataclass
class ThreadResult:
    threads: int
    dense: Stats
    sparse: Stats
    speedup: float
    round_ratio_q1: float
    round_ratio_q3: float
    dense_top_ops: List[dict] = field(default_factory=list)
    sparse_top_ops: List[dict] = field(default_factory=list)
    # with bursts (bench(burst=...) > 1): the first run of each burst, after the other model
    # ran (caches cold for this one); dense, sparse and speedup are then the warm runs
    cold_dense: Optional[Stats] = None
    cold_sparse: Optional[Stats] = None
    cold_speedup: Optional[float] = None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["dense"], d["sparse"] = self.dense.to_dict(), self.sparse.to_dict()
        for k in ("cold_dense", "cold_sparse"):
            d[k] = d[k].to_dict() if d[k] is not None else None
        return d


@dataclass
class BenchReport:
    sparse_model: str
    dense_model: str
    results: List[ThreadResult]
    environment: dict
    files: dict
    memory: dict
    label: str = ""

    def to_dict(self) -> dict:
        return {"label": self.label, "sparse_model": self.sparse_model,
                "dense_model": self.dense_model,
                "results": [r.to_dict() for r in self.results],
                "environment": self.environment, "files": self.files, "memory": self.memory}


def environment() -> dict:
    import onnxruntime as ort


    try:
        isa = _native.selected_isa()
    except Exception as e:  # an unavailable SPARSEKIT_ISA: say so instead of failing the run
        isa = f"unavailable ({e})"
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"sparsekit": __version__, "onnxruntime": ort.__version__, "isa": isa, "cpu": cpu,
            "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version()}


def bench(sparse_model, dense_model, *, threads: Sequence[int] = (1,), runs: int = 50,
          seconds: Optional[float] = None, warmup: int = 5, feeds=None, shapes=None,
          inputs_npz: Optional[str] = None, profile: bool = True, memory: bool = True,
          label: str = "", progress: Optional[Callable[[int, int, str], None]] = None,
          pin: bool = True, burst: int = 5) -> BenchReport:
    """Time `sparse_model` (sparsekit.session) against `dense_model` (stock onnxruntime).

    ``burst``: runs of each model back to back per round (sparsekit.timing.interleaved; the
    CLI's --burst); with more than 1 the speedup is the warm runs' and the first runs are
    reported as cold_*; 1: single runs round-robin."""
    sparse = as_model(sparse_model)
    dense = as_model(dense_model)
    if feeds is None:
        feeds = make_inputs(dense, shapes, inputs_npz)
    _check_same_interface(dense, sparse)
    results = []
    for t in threads:
        tick = (lambda done, total, t=t: progress(done, total, f"{t} thread(s)")) if progress else None
        cold = {}
        times = time_models(dense, sparse, feeds, t, warmup=warmup, runs=runs, seconds=seconds,
                            pin=pin, progress=tick, burst=burst, cold=cold)
        r = ratio(times["dense"], times["sparse"])
        tr = ThreadResult(t, Stats.of(times["dense"]), Stats.of(times["sparse"]), r["speedup"],
                          r["round_ratio_q1"], r["round_ratio_q3"])
        if burst > 1:
            tr.cold_dense, tr.cold_sparse = Stats.of(cold["dense"]), Stats.of(cold["sparse"])
            tr.cold_speedup = tr.cold_dense.median / tr.cold_sparse.median
        if profile:
            tr.dense_top_ops = top_ops(session(dense, t, TIMING_CONFIG, custom_ops=False,
                                               profile=True), feeds)
            tr.sparse_top_ops = top_ops(session(sparse, t, TIMING_CONFIG, profile=True), feeds)
        results.append(tr)
    files = {"sparse_bytes": sparse.ByteSize(), "dense_bytes": dense.ByteSize()}
    for key, src in (("sparse_path", sparse_model), ("dense_path", dense_model)):
        if not isinstance(src, onnx.ModelProto):
            files[key] = str(src)
    mem = {}
    if memory:
        mem = {"dense_peak_rss": peak_memory("dense", dense, feeds, threads[-1]),
               "sparse_peak_rss": peak_memory("sparse", sparse, feeds, threads[-1])}
    return BenchReport(_name(sparse_model), _name(dense_model), results, environment(), files,
                       mem, label)


def _name(m) -> str:
    if isinstance(m, onnx.ModelProto):
        return m.graph.name or "<model>"
    return str(m)


def _check_same_interface(dense: onnx.ModelProto, sparse: onnx.ModelProto) -> None:
    d = sorted(i.name for i in graph_inputs(dense))
    s = sorted(i.name for i in graph_inputs(sparse))
    if d != s:
        raise SparsekitError(f"the dense and sparse models take different inputs ({d} vs {s})")


# ---------------------------------------------------------------------------------------------
# pipelines: a dense model (or a zoo name) -> pruned -> converted -> benchmarked


def prepare(dense_model, pattern: str, sparsity: float, *, layout: str = "NCHW",
            threads: Optional[int] = None, **prune_kw):
    """Prune and convert a dense model in memory: (pruned dense model, sparse model, reports).
    ``layout`` (and ``threads`` for "auto"'s timing): convert's activation layout."""
    pruned, prune_report = prune(dense_model, pattern=pattern, sparsity=sparsity, **prune_kw)
    sparse, convert_report = convert(pruned, layout=layout, threads=threads)
    return pruned, sparse, prune_report, convert_report


def zoo_model(name: str) -> onnx.ModelProto:
    return models.build(name)


def max_relative_difference(dense, sparse, feeds, threads: Optional[int] = None) -> float:
    """Largest |dense - sparse| / max|dense| over all outputs: the two models must agree."""
    a = session(dense, threads, TIMING_CONFIG, custom_ops=False).run(None, feeds)
    b = session(sparse, threads, TIMING_CONFIG).run(None, feeds)
    worst = 0.0
    for x, y in zip(a, b):
        scale = float(np.abs(x).max()) or 1.0
        worst = max(worst, float(np.abs(x.astype(np.float64) - y).max()) / scale)
    return worst


@dataclass
class SweepPoint:
    pattern: str
    sparsity: float
    threads: int
    speedup: float
    dense_ms: float
    sparse_ms: float
    converted: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def sweep(dense_model, sparsities: Sequence[float], patterns: Sequence[str], *,
          threads: Sequence[int] = (1,), runs: int = 20, seconds: Optional[float] = None,
          feeds=None, progress: Optional[Callable[[int, int, str], None]] = None,
          pin: bool = True, burst: int = 5) -> List[SweepPoint]:
    """Prune + convert + bench at each sparsity for each pattern: where does sparse start to win?"""
    dense = as_model(dense_model)
    if feeds is None:
        feeds = make_inputs(dense)
    points = []
    total = len(sparsities) * len(patterns)
    step = 0
    for pattern in patterns:
        for s in sparsities:
            if progress:
                progress(step, total, f"{pattern} {s:.2f}")
            pruned, sparse, _, crep = prepare(dense, pattern, s)
            rep = bench(sparse, pruned, threads=threads, runs=runs, seconds=seconds, warmup=3,
                        feeds=feeds, profile=False, memory=False, pin=pin, burst=burst)
            for r in rep.results:
                points.append(SweepPoint(pattern, s, r.threads, r.speedup, r.dense.median,
                                         r.sparse.median, crep.totals["converted"]))
            step += 1
    if progress:
        progress(total, total, "")
    return points
