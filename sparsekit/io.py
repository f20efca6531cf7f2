"""Reading and writing models safely: clear one-line errors, atomic writes, inputs never touched."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import onnx

from .errors import SparsekitError

PathLike = Union[str, os.PathLike]

# Above this size protobuf cannot serialise a model in one piece; weights go to a side file.
_PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: PathLike) -> onnx.ModelProto:
    """Load an ONNX model (external data included) or raise SparsekitError with one line."""
    p = Path(path)
    if not p.exists():
        raise SparsekitError(f"{p}: no such file")
    if p.is_dir():
        raise SparsekitError(f"{p}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=True)
    except (onnx.onnx_cpp2py_export.checker.ValidationError, FileNotFoundError) as e:
        raise SparsekitError(f"{p}: external data could not be loaded ({_first_line(e)})") from e
    except Exception as e:  # protobuf's DecodeError and friends
        raise SparsekitError(f"{p}: not a valid ONNX model ({_first_line(e)})") from e
    if not model.graph.node and not model.graph.input:
        raise SparsekitError(f"{p}: not a valid ONNX model (empty graph)")
    return model


def uses_external_data(path: PathLike) -> bool:
    """Whether the model file keeps (some of) its tensors in side files."""
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(m))


def as_model(model_or_path) -> onnx.ModelProto:
    """Accept a ModelProto (used as is, never modified by callers) or a path."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    return load_model(model_or_path)


def check_output_path(out: PathLike, force: bool, inputs: tuple = ()) -> Path:
    """Refuse to clobber an input or an existing file (without force) before any work is done."""
    o = Path(out)
    for i in inputs:
        if i is not None and o.resolve() == Path(i).resolve():
            raise SparsekitError(f"{o}: output path is the input file; choose another -o")
    if o.exists() and not force:
        raise SparsekitError(f"{o}: already exists (use --force to overwrite)")
    if o.exists() and o.is_dir():
        raise SparsekitError(f"{o}: is a directory")
    parent = o.resolve().parent
    if not parent.is_dir():
        raise SparsekitError(f"{parent}: output directory does not exist")
    if not os.access(parent, os.W_OK):
        raise SparsekitError(f"{parent}: output directory is not writable")
    return o


def save_model(model: onnx.ModelProto, out: PathLike, external_data: bool | None = None) -> Path:
    """Write atomically: a temporary file in the same directory, then rename over the target.

    External data (one side file named after the output) is used when asked for, or when the
    model is too large for a single protobuf.  A failure leaves no partial file behind.
    """
    o = Path(out)
    parent = o.resolve().parent
    if external_data is None:
        external_data = model.ByteSize() > _PROTOBUF_LIMIT
    tmp_paths = []
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{o.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        tmp_paths.append(tmp)
        if external_data:
            data_name = o.name + ".data"
            fd, tmp_data = tempfile.mkstemp(prefix=f".{data_name}.", suffix=".tmp", dir=parent)
            os.close(fd)
            os.unlink(tmp_data)
            tmp_paths.append(tmp_data)
            m = onnx.ModelProto()
            m.CopyFrom(model)
            # onnx writes the data file next to the model under `location`; write it under
            # the temporary name, then rename both.
            onnx.save_model(m, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(tmp_data), size_threshold=1024)
            _rewrite_locations(tmp, os.path.basename(tmp_data), data_name)
            os.replace(tmp_data, parent / data_name)
        else:
            onnx.save_model(model, tmp)
        for t in tmp_paths:  # mkstemp makes 0600 files; give them the usual umask permissions
            if os.path.exists(t):
                os.chmod(t, 0o666 & ~current_umask())
        os.replace(tmp, o)
    except OSError as e:
        raise SparsekitError(f"{o}: could not write ({e.strerror or e})") from e
    finally:
        for t in tmp_paths:
            if os.path.exists(t):
                os.unlink(t)
    return o


def save_text(text: str, out: PathLike) -> Path:
    """Write a text file (a recipe) atomically, like :func:`save_model`."""
    o = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{o.name}.", suffix=".tmp", dir=o.resolve().parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, o)
    except OSError as e:
        raise SparsekitError(f"{o}: could not write ({e.strerror or e})") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return o


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _rewrite_locations(model_path: str, old: str, new: str) -> None:
    """Point external-data entries of the (temporary) model file at the final data file name."""
    m = onnx.load(model_path, load_external_data=False)
    for t in _all_tensors(m):
        for e in t.external_data:
            if e.key == "location" and e.value == old:
                e.value = new
    onnx.save_model(m, model_path)


def _all_tensors(m: onnx.ModelProto):
    yield from m.graph.initializer
    for n in m.graph.node:
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__
