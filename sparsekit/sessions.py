"""sessions: running models in onnxruntime, in one place.

* :func:`get_library_path`: the custom-op library (``libsparsekit_ort.so``) that runs ai.sparsekit;
* :func:`session_options` / :func:`session`: the one session factory, for a dense model (stock
  onnxruntime) or one with ai.sparsekit ops (the library registered), optionally profiling;
* :data:`TIMING_CONFIG` / :func:`pinned`: the settings every side-by-side measurement runs with;
* :func:`graph_inputs` / :func:`make_inputs` / :func:`parse_shapes`: a model's inputs, from an
  .npz or generated;
* :func:`time_models` / :func:`time_pair`: a dense and a sparse model timed interleaved in this
  process, with the same threads and pinning (the statistics are in :mod:`sparsekit.timing`).

onnxruntime is imported where a session is made, so ``import sparsekit`` (and the CLI's start)
does not load it.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from . import external
from .errors import SparsekitError
from .timing import interleaved

__all__ = ["LIBRARY_NAME", "LIBRARY_ENV", "get_library_path", "session_options", "session", "node_times",
           "TIMING_CONFIG", "pinned", "graph_inputs", "make_inputs", "parse_shapes",
           "time_models", "time_pair", "LAYER_WARMUP", "LAYER_RUNS"]

LIBRARY_NAME = "libsparsekit_ort.so"
LIBRARY_ENV = "SPARSEKIT_LIBRARY"


def get_library_path() -> str:
    """Path of the onnxruntime custom-op library (libsparsekit_ort.so).

    $SPARSEKIT_LIBRARY overrides (e.g. an AddressSanitizer build); otherwise the library
    installed next to the package is used.
    """
    env = os.environ.get(LIBRARY_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise SparsekitError(f"{LIBRARY_ENV}={env}: no such file")
        return str(p.resolve())
    # the package's own search path (editable installs spread it over directories); read from
    # the loaded package rather than imported, as the package's __init__ sits above this module
    pkg_path = list(sys.modules[__package__].__path__)
    for d in pkg_path:
        p = Path(d) / LIBRARY_NAME
        if p.is_file():
            return str(p.resolve())
    raise SparsekitError(
        f"{LIBRARY_NAME} not found next to the sparsekit package ({', '.join(pkg_path)}); "
        "reinstall sparsekit (pip install .) or set SPARSEKIT_LIBRARY")


def session_options(threads: Optional[int] = None, config: Optional[dict] = None, *,
                    custom_ops: bool = True, **kw):
    """SessionOptions, with the sparsekit library registered unless ``custom_ops=False``.

    ``threads`` sets intra_op_num_threads (None: onnxruntime's default); ``config`` adds session
    config entries (e.g. {"session.intra_op.allow_spinning": "0"}); any other keyword sets the
    SessionOptions attribute of that name (e.g. graph_optimization_level).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        if int(threads) < 1:
            raise SparsekitError(f"threads must be >= 1, got {threads}")
        so.intra_op_num_threads = int(threads)
    for k, v in kw.items():
        if not hasattr(so, k):
            raise SparsekitError(f"unknown onnxruntime SessionOptions setting {k!r}")
        setattr(so, k, v)
    for k, v in (config or {}).items():
        so.add_session_config_entry(str(k), str(v))
    if custom_ops:
        so.register_custom_ops_library(get_library_path())
    return so


def session(model_or_path, threads: Optional[int] = None, config: Optional[dict] = None, *,
            custom_ops: bool = True, profile: bool = False, **kw):
    """An onnxruntime InferenceSession (CPU) for a model that may use ai.sparsekit ops.

    ``model_or_path``: an onnx.ModelProto, serialized bytes, or a path.  ``custom_ops=False``:
    stock onnxruntime, the library not loaded (the dense side of a comparison, or dense models
    whose runs must not depend on the library).  ``profile``: onnxruntime's profiler on, its
    file in the temporary directory (read it with ``end_profiling()``).  ``threads``, ``config``
    and other keywords: see :func:`session_options`.  Errors in the model (including every
    sparse-format validation error) raise onnxruntime's exception at creation.
    """
    import onnxruntime as ort

    if profile:
        prefix = "sparsekit_sparse" if custom_ops else "sparsekit_dense"
        kw = {**kw, "enable_profiling": True,
              "profile_file_prefix": os.path.join(tempfile.gettempdir(), prefix)}
    so = session_options(threads, config, custom_ops=custom_ops, **kw)
    if isinstance(model_or_path, onnx.ModelProto):
        # tensors a lazy load left on disk are not readable by onnxruntime: inline them
        model = external.materialized(model_or_path) if external.has_deferred(model_or_path) \
            else model_or_path
        src = model.SerializeToString()
    elif isinstance(model_or_path, (bytes, bytearray)):
        src = bytes(model_or_path)
    else:
        p = Path(model_or_path)
        if not p.is_file():
            raise SparsekitError(f"{p}: no such file")
        src = str(p)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def node_times(sess) -> Dict[str, Tuple[str, List[float]]]:
    """End the profiling of ``sess`` (a :func:`session` with ``profile=True``) and read it: per
    node, in the order they first ran, its op type and each run's time in ms.  The profile file
    is removed."""
    path = sess.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.unlink(path)
    out: Dict[str, Tuple[str, List[float]]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "?")
        out.setdefault(name, (op, []))[1].append(e.get("dur", 0) / 1e3)
    return out


# ---------------------------------------------------------------------------------------------
# side-by-side timing setup

# Every session of a side-by-side measurement runs with these (and `sparsekit bench` also makes
# its profiling, memory and agreement sessions with them, so all see one setup).  Interleaved
# sessions in one process: a pool that keeps spinning after its run starves the other session's
# threads (2-5x noisier 2-thread times), so the pool spins only while a run is in progress
# (force_spinning_stop) — between ops a sleeping worker costs a wake-up per op (MobileNetV1 at
# 2 threads, pinned, Zen3: dense 7.2 -> 6.9 ms, sparse 2.5 -> 2.3 ms against not spinning at all).
TIMING_CONFIG = {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1",
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


# Rounds for timing one layer alone (convert --autotune, convert --predict-relu --autotune):
# a layer is timed once per candidate, so few rounds, after a short warm-up.
LAYER_WARMUP = 2
LAYER_RUNS = 15


def time_models(dense, sparse, feeds: Dict[str, np.ndarray], threads: Optional[int] = None, *,
                warmup: int = 3, runs: int = 20, seconds: Optional[float] = None,
                pin: bool = True, progress: Optional[Callable[[int, int], None]] = None,
                base_custom_ops: bool = False, burst: int = 1,
                cold: Optional[dict] = None) -> Dict[str, np.ndarray]:
    """Per-round milliseconds of ``dense`` (stock onnxruntime) and ``sparse`` (with sparsekit's
    ops) on the same ``feeds``, keys "dense" and "sparse".

    Both sessions get ``threads`` threads and :data:`TIMING_CONFIG`; with ``pin`` the calling
    thread and the pool workers are pinned (:func:`pinned`).  The runs are interleaved
    (:func:`sparsekit.timing.interleaved`: ``warmup``, ``runs``, ``seconds``, ``progress``,
    ``burst``, ``cold``).
    ``base_custom_ops``: ``dense`` has sparsekit ops too (two layouts of one converted model).
    """
    with pinned(threads, pin) as cfg:
        config = {**TIMING_CONFIG, **cfg}
        ds = session(dense, threads, config, custom_ops=base_custom_ops)
        ss = session(sparse, threads, config)
        times = interleaved({"dense": lambda s=ds: s.run(None, feeds),
                             "sparse": lambda s=ss: s.run(None, feeds)},
                            warmup=warmup, runs=runs, seconds=seconds, progress=progress,
                            burst=burst, cold=cold)
        # the sessions (and their pinned pools) go before this thread's affinity is restored
        del ds, ss
    return times


def time_pair(dense, sparse, feeds: Dict[str, np.ndarray], threads: Optional[int] = None, *,
              warmup: int = LAYER_WARMUP, runs: int = LAYER_RUNS, pin: bool = True,
              base_custom_ops: bool = False) -> Tuple[float, float]:
    """(dense median ms, sparse median ms): two candidate models for the same job (typically
    one layer alone, built both ways) timed side by side by :func:`time_models`."""
    t = time_models(dense, sparse, feeds, threads, warmup=warmup, runs=runs, pin=pin,
                    base_custom_ops=base_custom_ops)
    return float(np.median(t["dense"])), float(np.median(t["sparse"]))


# ---------------------------------------------------------------------------------------------
# inputs

_NUMPY_OF_ONNX = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_,
}


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
    """The inputs a run must feed: graph inputs that are not initializers."""
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
