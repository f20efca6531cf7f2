"""bench: how much faster did it get, on this machine?  Dense vs sparse, side by side, one process.

The dense reference runs in stock onnxruntime (graph optimisation ALL), the sparse model through
`sparsekit.session`, with the same thread count, interleaved round by round after a warm-up.
Reported: median / p90 / min latency of each, the speedup (dense median / sparse median) with the
spread of per-round ratios, the top ops by time from onnxruntime's profiler, the ISA the kernels
chose, onnxruntime's version, file sizes and peak memory.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import onnx

from .errors import SparsekitError
from .io import as_model
from .timing import Stats, interleaved, ratio

DEVICES = ("cpu",)

_NUMPY_OF_ONNX = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_,
}


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise SparsekitError(f"device {device!r} is not supported by this build; "
                             f"supported: {', '.join(DEVICES)}")


def parse_shapes(specs: Sequence[str]) -> Dict[str, int]:
    """`--shape name=value` for symbolic dims (e.g. batch=1, seq=128)."""
    out = {}
    for s in specs:
        key, sep, val = s.partition("=")
        if not sep or not key:
            raise SparsekitError(f"--shape takes NAME=SIZE, got {s!r}")
        try:
            out[key] = int(val)
        except ValueError:
            raise SparsekitError(f"--shape {s!r}: {val!r} is not an integer") from None
        if out[key] < 1:
            raise SparsekitError(f"--shape {s!r}: size must be >= 1")
    return out


def graph_inputs(model: onnx.ModelProto) -> List[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def make_inputs(model: onnx.ModelProto, shapes: Optional[Dict[str, int]] = None,
                npz: Optional[str] = None, seed: int = 0) -> Dict[str, np.ndarray]:
    """Inputs from an .npz (checked against the model) or generated from the input types."""
    shapes = shapes or {}
    inputs = graph_inputs(model)
    if npz is not None:
        try:
            data = dict(np.load(npz))
        except (OSError, ValueError) as e:
            raise SparsekitError(f"{npz}: cannot read inputs ({e})") from e
        missing = [i.name for i in inputs if i.name not in data]
        if missing:
            raise SparsekitError(f"{npz}: no array for model input(s) {', '.join(missing)}")
        feeds = {}
        for i in inputs:
            want = _NUMPY_OF_ONNX.get(i.type.tensor_type.elem_type)
            arr = data[i.name]
            if want is not None and arr.dtype != want:
                raise SparsekitError(f"{npz}: input {i.name!r} is {arr.dtype}, model wants "
                                     f"{np.dtype(want).name}")
            feeds[i.name] = arr
        return feeds
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in inputs:
        tt = i.type.tensor_type
        dtype = _NUMPY_OF_ONNX.get(tt.elem_type)
        if dtype is None:
            raise SparsekitError(f"input {i.name!r}: element type {tt.elem_type} is not supported "
                                 "for generated inputs; pass --inputs file.npz")
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            elif d.dim_param and d.dim_param in shapes:
                dims.append(shapes[d.dim_param])
            else:
                name = d.dim_param or "?"
                raise SparsekitError(f"input {i.name!r} has symbolic dimension {name!r}; "
                                     f"give its size with --shape {name}=N")
        if np.issubdtype(dtype, np.integer):
            # token ids and indices: small non-negative values stay in range of any embedding
            feeds[i.name] = rng.integers(0, 2, size=dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[i.name] = rng.random(dims) < 0.5
        else:
            feeds[i.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


# Both sides run with these.  Interleaved sessions in one process: a pool that keeps spinning
# after its run starves the other session's threads (2-5x noisier 2-thread times), so the pool
# spins only while a run is in progress (force_spinning_stop) — between ops a sleeping worker
# costs a wake-up per op (MobileNetV1 at 2 threads, pinned, Zen3: dense 7.2 -> 6.9 ms, sparse
# 2.5 -> 2.3 ms against not spinning at all).
SESSION_CONFIG = {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1",
                  "session.inter_op.allow_spinning": "0"}


@contextmanager
def pinned(threads: Optional[int], enabled: bool = True):
    """Pin the calling thread to its first allowed CPU for the duration, and yield the session
    config that pins onnxruntime's threads-1 pool workers to the next ones ({} when threads < 2,
    too few CPUs, or not Linux).  Unpinned, a 2-thread pool whose worker sleeps between ops
    (no spinning) was often woken on the main thread's CPU and stayed there: on Zen3,
    MobileNetV1 at 2 threads measured 2.07-2.74x run to run, pinned 2.74-2.75x in 4 of 4."""
    if not enabled or not threads or threads < 2 or not hasattr(os, "sched_setaffinity"):
        yield {}
        return
    before = os.sched_getaffinity(0)
    cpus = sorted(before)
    if len(cpus) < threads:
        yield {}
        return
    os.sched_setaffinity(0, {cpus[0]})
    try:
        # onnxruntime numbers logical processors from 1; one entry per pool worker
        yield {"session.intra_op_thread_affinities": ";".join(str(c + 1) for c in cpus[1:threads])}
    finally:
        os.sched_setaffinity(0, before)


def dense_session(model, threads: Optional[int], profile: bool = False,
                  config: Optional[dict] = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for k, v in {**SESSION_CONFIG, **(config or {})}.items():
        so.add_session_config_entry(k, v)
    if threads:
        so.intra_op_num_threads = threads
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tempfile.gettempdir(), "sparsekit_dense")
    return ort.InferenceSession(_source(model), so, providers=["CPUExecutionProvider"])


def sparse_session(model, threads: Optional[int], profile: bool = False,
                   config: Optional[dict] = None):
    from .runtime import session

    kw = {}
    if profile:
        kw = {"enable_profiling": True,
              "profile_file_prefix": os.path.join(tempfile.gettempdir(), "sparsekit_sparse")}
    return session(_source_model(model), threads=threads,
                   config={**SESSION_CONFIG, **(config or {})},
                   **kw)


def _source(model):
    return model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)


def _source_model(model):
    return model if isinstance(model, onnx.ModelProto) else str(model)


def top_ops(sess, feeds, runs: int = 5, top: int = 8) -> List[dict]:
    """Run a profiling session and sum node times by op type (ms per run), largest first."""
    for _ in range(runs):
        sess.run(None, feeds)
    path = sess.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.unlink(path)
    by_op: Dict[str, float] = {}
    count: Dict[str, int] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + e.get("dur", 0) / 1e3 / runs
        count[op] = count.get(op, 0) + 1
    rows = [{"op": k, "ms": v, "nodes": count[k] // runs} for k, v in by_op.items()]
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
        sess = dense_session(m, threads) if kind == "dense" else sparse_session(m, threads)
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

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["dense"], d["sparse"] = self.dense.to_dict(), self.sparse.to_dict()
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

    from . import __version__

    try:
        from . import _native
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
          pin: bool = True) -> BenchReport:
    """Time `sparse_model` (sparsekit.session) against `dense_model` (stock onnxruntime)."""
    sparse = as_model(sparse_model)
    dense = as_model(dense_model)
    if feeds is None:
        feeds = make_inputs(dense, shapes, inputs_npz)
    _check_same_interface(dense, sparse)
    results = []
    for t in threads:
        tick = (lambda done, total, t=t: progress(done, total, f"{t} thread(s)")) if progress else None
        with pinned(t, pin) as cfg:
            ds, ss = dense_session(dense, t, config=cfg), sparse_session(sparse, t, config=cfg)
            times = interleaved({"dense": lambda ds=ds: ds.run(None, feeds),
                                 "sparse": lambda ss=ss: ss.run(None, feeds)},
                                warmup=warmup, runs=runs, seconds=seconds, progress=tick)
            del ds, ss
        r = ratio(times["dense"], times["sparse"])
        tr = ThreadResult(t, Stats.of(times["dense"]), Stats.of(times["sparse"]), r["speedup"],
                          r["round_ratio_q1"], r["round_ratio_q3"])
        if profile:
            tr.dense_top_ops = top_ops(dense_session(dense, t, profile=True), feeds)
            tr.sparse_top_ops = top_ops(sparse_session(sparse, t, profile=True), feeds)
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


def prepare(dense_model, pattern: str, sparsity: float, **prune_kw):
    """Prune and convert a dense model in memory: (pruned dense model, sparse model, reports)."""
    from .convert import convert
    from .prune import prune

    pruned, prune_report = prune(dense_model, pattern=pattern, sparsity=sparsity, **prune_kw)
    sparse, convert_report = convert(pruned)
    return pruned, sparse, prune_report, convert_report


def zoo_model(name: str) -> onnx.ModelProto:
    from . import models

    return models.build(name)


def max_relative_difference(dense, sparse, feeds, threads: Optional[int] = None) -> float:
    """Largest |dense - sparse| / max|dense| over all outputs: the two models must agree."""
    a = dense_session(dense, threads).run(None, feeds)
    b = sparse_session(sparse, threads).run(None, feeds)
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
          pin: bool = True) -> List[SweepPoint]:
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
                        feeds=feeds, profile=False, memory=False, pin=pin)
            for r in rep.results:
                points.append(SweepPoint(pattern, s, r.threads, r.speedup, r.dense.median,
                                         r.sparse.median, crep.totals["converted"]))
            step += 1
    if progress:
        progress(total, total, "")
    return points
