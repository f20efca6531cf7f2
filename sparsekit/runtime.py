"""Running sparse models: the custom-op library's path and an onnxruntime session helper."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import onnx

from .errors import SparsekitError

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
    from . import __path__ as pkg_path  # editable installs spread the package over directories
    for d in pkg_path:
        p = Path(d) / LIBRARY_NAME
        if p.is_file():
            return str(p.resolve())
    raise SparsekitError(
        f"{LIBRARY_NAME} not found next to the sparsekit package ({', '.join(pkg_path)}); "
        "reinstall sparsekit (pip install .) or set SPARSEKIT_LIBRARY")


def session_options(threads: Optional[int] = None, config: Optional[dict] = None, **kw):
    """SessionOptions with the sparsekit library registered.

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
    so.register_custom_ops_library(get_library_path())
    return so


def session(model_or_path, threads: Optional[int] = None, config: Optional[dict] = None, **kw):
    """An onnxruntime InferenceSession (CPU) for a model that may use ai.sparsekit ops.

    ``model_or_path``: an onnx.ModelProto, serialized bytes, or a path.  Errors in the model
    (including every sparse-format validation error) raise onnxruntime's exception at creation.
    """
    import onnxruntime as ort

    so = session_options(threads, config, **kw)
    if isinstance(model_or_path, onnx.ModelProto):
        src = model_or_path.SerializeToString()
    elif isinstance(model_or_path, (bytes, bytearray)):
        src = bytes(model_or_path)
    else:
        p = Path(model_or_path)
        if not p.is_file():
            raise SparsekitError(f"{p}: no such file")
        src = str(p)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
