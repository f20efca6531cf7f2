"""Tensors kept on disk, so big models are pruned and converted one weight at a time.

A model loaded lazily (``io.load_model(path, lazy=True)``) keeps its external-data tensors
unloaded; :func:`defer` marks each with the absolute folder of its side file (``BASE_KEY`` in its
``external_data``), so :func:`read` finds its bytes wherever the model was read from.  A result
computed from such a tensor is not kept in memory either: :func:`spill` appends it to a scratch
file (deleted when the process exits) and leaves the tensor pointing there.  When the model is
saved, :func:`copy_to` streams each deferred tensor into the output's side file in chunks.
Onnxruntime and onnx's own readers do not know ``BASE_KEY``: :func:`materialized` gives a copy
with the data inline for them.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import BinaryIO, Dict, Iterator, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import SparsekitError

__all__ = ["BASE_KEY", "defer", "is_deferred", "has_deferred", "read", "spill", "spilled",
           "materialized", "stubbed", "source", "copy_to", "all_tensors"]

# types whose bytes are not a numpy array of the type tensor_dtype_to_np_dtype names
_PACKED_TYPES = {onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT4, onnx.TensorProto.UINT4} | {
    getattr(onnx.TensorProto, n) for n in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                                           "FLOAT8E5M2FNUZ", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}
BASE_KEY = "sparsekit.base"   # absolute folder `location` is relative to; never saved to a file
_CHUNK = 64 << 20   # bytes copied at a time when streaming a tensor to the output


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor that may hold data: initializers and Constant-node values, subgraphs too."""
    def walk(g: onnx.GraphProto):
        yield from g.initializer
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    yield from walk(a.g)
                for sub in a.graphs:
                    yield from walk(sub)
    yield from walk(model.graph)


def _entries(t: onnx.TensorProto) -> Dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _set_entries(t: onnx.TensorProto, entries: Dict[str, str]) -> None:
    del t.external_data[:]
    for k, v in entries.items():
        t.external_data.add(key=k, value=v)


def is_deferred(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == BASE_KEY for e in t.external_data)


def has_deferred(model: onnx.ModelProto) -> bool:
    return any(is_deferred(t) for t in all_tensors(model))


def defer(model: onnx.ModelProto, base_dir: str) -> int:
    """Mark the external tensors of a model read without its data; check each side file holds
    the bytes the tensor claims (a one-line error names the first that does not).  Returns how
    many tensors were deferred."""
    base = os.path.abspath(base_dir)
    count = 0
    for t in all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        e = _entries(t)
        loc = e.get("location", "")
        path = os.path.normpath(os.path.join(base, loc))
        if not loc or os.path.isabs(loc) or not os.path.isfile(path):
            raise SparsekitError(f"external data of {t.name!r}: side file {loc!r} not found "
                                 f"next to the model ({base})")
        offset, length = int(e.get("offset", 0) or 0), _nbytes(t)
        if "length" in e and int(e["length"]) < length or \
                offset + length > os.path.getsize(path):
            raise SparsekitError(f"external data of {t.name!r}: {loc!r} holds fewer bytes than "
                                 f"its shape {list(t.dims)} needs")
        e[BASE_KEY] = base
        _set_entries(t, e)
        count += 1
    return count


def _nbytes(t: onnx.TensorProto) -> int:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    return int(np.prod(t.dims, dtype=np.int64)) * np.dtype(dtype).itemsize


def source(t: onnx.TensorProto):
    """(file, offset, length) of a deferred tensor's bytes."""
    e = _entries(t)
    return os.path.join(e[BASE_KEY], e["location"]), int(e.get("offset", 0) or 0), _nbytes(t)


def read(t: onnx.TensorProto) -> np.ndarray:
    """The array of a deferred tensor, read from its file now."""
    path, offset, length = source(t)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
    # straight into the array (one copy of the tensor in memory), where numpy has the type
    plain = dtype.kind in "biuf" and t.data_type not in _PACKED_TYPES
    with open(path, "rb") as f:
        f.seek(offset)
        if plain:
            arr = np.fromfile(f, dtype=dtype.newbyteorder("<"), count=length // dtype.itemsize)
            if arr.nbytes != length:
                raise SparsekitError(f"external data of {t.name!r}: {path} ended early")
            return arr.astype(dtype, copy=False).reshape(tuple(t.dims))
        data = f.read(length)
    if len(data) != length:
        raise SparsekitError(f"external data of {t.name!r}: {path} ended early")
    inline = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, raw_data=data)
    return np.array(numpy_helper.to_array(inline))


class _Scratch:
    """One append-only scratch file per process for spilled tensors."""

    def __init__(self):
        self.dir: Optional[str] = None
        self.file: Optional[BinaryIO] = None

    def append(self, data) -> tuple:
        if self.file is None:
            self.dir = tempfile.mkdtemp(prefix="sparsekit-")
            self.file = open(os.path.join(self.dir, "spilled.bin"), "w+b")
            atexit.register(self.close)
        self.file.seek(0, os.SEEK_END)
        offset = self.file.tell()
        self.file.write(data)
        self.file.flush()
        return self.dir, "spilled.bin", offset

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.file = None


_scratch = _Scratch()


def spill(t: onnx.TensorProto, arr: np.ndarray) -> None:
    """Replace ``t``'s data with ``arr`` (its dtype and shape), kept in the scratch file."""
    arr = np.ascontiguousarray(arr)
    base, loc, offset = _scratch.append(memoryview(arr.reshape(-1)).cast("B"))   # no copy
    name, doc = t.name, t.doc_string
    t.Clear()
    t.name, t.doc_string = name, doc
    t.data_type = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
    t.dims.extend(arr.shape)
    t.data_location = onnx.TensorProto.EXTERNAL
    _set_entries(t, {"location": loc, "offset": str(offset), "length": str(arr.nbytes),
                     BASE_KEY: base})


def spilled(t: onnx.TensorProto) -> onnx.TensorProto:
    """A new tensor holding ``t``'s data in the scratch file (a packed tensor just made).  A new
    message, not ``t`` cleared: protobuf keeps a cleared message's bytes until it is freed."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return t
    out = onnx.TensorProto(name=t.name, doc_string=t.doc_string)
    spill(out, numpy_helper.to_array(t))
    return out


def materialized(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every deferred tensor's data inline (what onnxruntime and onnx can read)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in all_tensors(m):
        if is_deferred(t):
            arr = read(t)
            name, doc = t.name, t.doc_string
            from_input = _entries(t)[BASE_KEY] != _scratch.dir
            t.CopyFrom(numpy_helper.from_array(arr, name))
            if doc:
                t.doc_string = doc
            if from_input:   # as onnx's own loader leaves a tensor it read from a side file
                t.data_location = onnx.TensorProto.DEFAULT
    return m


def stubbed(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself, or where it has deferred tensors a copy in which each is an empty
    tensor of its type: what onnx.checker can take (it would look for the side files relative
    to the working directory).  Only for checks that do not read weights."""
    if not has_deferred(model):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in all_tensors(m):
        if is_deferred(t):
            name, dtype = t.name, t.data_type
            t.Clear()
            t.name, t.data_type = name, dtype
            t.dims.append(0)
    return m


def copy_to(t: onnx.TensorProto, out: BinaryIO) -> int:
    """Append a deferred tensor's bytes to ``out`` in chunks (never the whole tensor in memory);
    returns how many were written."""
    path, offset, length = source(t)
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise SparsekitError(f"external data of {t.name!r}: {path} ended early")
            out.write(chunk)
            left -= len(chunk)
    return length
