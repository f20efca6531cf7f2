"""Reading and writing models safely: clear one-line errors, atomic writes, inputs never touched.

External data: a model may keep its tensors in side files (one or many, in its folder or below
it).  Every side file of a model read here is remembered for the life of the process, so that a
model written later never writes over one: its own side file is named after the output
(`OUT.data`), or `OUT.1.data`, `OUT.2.data`, ... when that name is taken by a file that is not the
output's own previous side file.  The side file and the .onnx appear together or not at all.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Union

import onnx

from . import external
from .errors import SparsekitError

PathLike = Union[str, os.PathLike]

# Above this size protobuf cannot serialise a model in one piece; weights go to a side file.
_PROTOBUF_LIMIT = 2**31 - 1
# Tensors at least this large go to the side file (onnx's default); smaller ones stay inline.
_EXTERNAL_THRESHOLD = 1024
# Side-file offsets of large tensors start on a page, so onnxruntime can map them.
_PAGE = 4096

# Files referenced by models read in this process (the .onnx and its side files), by resolved
# path and by (device, inode) so that links are caught too; never written over.
_read_files: set = set()
_read_ids: set = set()
# model path -> whether it keeps tensors in side files (answered at load, no second parse)
_external_models: dict = {}


def load_model(path: PathLike, lazy: bool = False) -> onnx.ModelProto:
    """Load an ONNX model (external data included) or raise SparsekitError with one line.

    ``lazy``: leave external-data tensors on disk, each read when it is used (external.py): the
    CLI's prune and convert then hold one weight at a time, not the whole model.
    """
    p = Path(path)
    if not p.exists():
        raise SparsekitError(f"{p}: no such file")
    if p.is_dir():
        raise SparsekitError(f"{p}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise SparsekitError(f"{p}: not a valid ONNX model ({_first_line(e)})") from e
    if not model.graph.node and not model.graph.input:
        raise SparsekitError(f"{p}: not a valid ONNX model (empty graph)")
    side = side_files(model, p.parent, path_for_errors=p)
    _remember(p, side)
    if side and lazy:
        external.defer(model, str(p.parent))
    elif side:
        try:
            # relative to the folder of the path as given, as onnx and onnxruntime resolve it
            onnx.load_external_data_for_model(model, str(p.parent))
        except Exception as e:  # onnx's ValidationError (bad location), short file, ...
            raise SparsekitError(f"{p}: external data could not be loaded ({_first_line(e)})") from e
    return model


def side_files(model: onnx.ModelProto, base_dir: PathLike, path_for_errors=None) -> list:
    """The side files `model` (read without its external data) references, relative to base_dir.

    Raises SparsekitError naming the first side file that does not exist.
    """
    base = Path(base_dir)
    found: dict = {}
    for t in external.all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if not loc:
            raise SparsekitError(f"{path_for_errors or base}: tensor {t.name!r} is marked external "
                                 "but names no side file")
        if loc not in found:
            f = base / loc
            if not f.is_file():
                raise SparsekitError(f"{path_for_errors or base}: external data file {f} (tensor "
                                     f"{t.name!r}) not found; it must sit next to the model as "
                                     "when it was saved")
            found[loc] = f
    return list(found.values())


def uses_external_data(path: PathLike) -> bool:
    """Whether the model file keeps (some of) its tensors in side files."""
    key = _key(path)
    if key in _external_models:
        return _external_models[key]
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in external.all_tensors(m))


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
    if o.exists():  # --force: still never over a side file of an input
        for i in inputs:
            if i is not None and _is_side_file_of(o, Path(i)):
                raise SparsekitError(f"{o}: is a side file of the input {i}; choose another -o")
    parent = o.resolve().parent
    if not parent.is_dir():
        raise SparsekitError(f"{parent}: output directory does not exist")
    if not os.access(parent, os.W_OK):
        raise SparsekitError(f"{parent}: output directory is not writable")
    return o


def save_model(model: onnx.ModelProto, out: PathLike, external_data: bool | None = None, *,
               source: PathLike | None = None) -> Path:
    """Write `model` to `out` atomically, with its own side file when it has external data.

    external_data: True always writes tensors of 1 KiB or more to a side file; False never does
    (a one-line error if the model is too large for one protobuf); None does when `source` (the
    model this one was made from) has external data or when the model is too large.

    The side file is `OUT.data`, or the first free `OUT.N.data` when `OUT.data` exists and is not
    `out`'s own previous side file or is referenced by a model read in this process.  Both files
    are written under temporary names; the side file is moved into place first, then the .onnx;
    a failure removes what was created and puts back what was replaced.  Side files of a replaced
    `out` are removed once the new .onnx is in place, unless a model read here references them.
    Returns `out` as a Path.
    """
    o = Path(out)
    parent = o.resolve().parent
    size = model.ByteSize() + sum(_deferred_bytes(t) for t in external.all_tensors(model))
    too_large = size > _PROTOBUF_LIMIT
    if external_data is False and too_large:
        raise SparsekitError(f"{o}: the model is {size / 2**30:.1f} GiB, more than "
                             "one protobuf can hold (2 GiB): it needs external data, refused by "
                             "--no-external-data")
    if external_data is None:
        external_data = too_large or (source is not None and uses_external_data(source))
    if _is_read_file(o):
        raise SparsekitError(f"{o}: is a file of a model read in this command; choose another -o")
    old_side = _own_side_files(o)
    mode = 0o666 & ~current_umask()
    created = []    # temporary or final paths to remove if anything fails
    restore = None  # (backup, final): a replaced side file to put back on failure
    data_final = None
    try:
        large = list(_large_tensors(model)) if external_data else []
        if large:
            data_final = parent / _side_file_name(o, old_side)
            tmp_data = _mkstemp(parent, data_final.name, mode)
            created.append(tmp_data)
            entries = _write_side_file(large, tmp_data)
        tmp = _mkstemp(parent, o.name, mode)
        created.append(tmp)
        if large:
            _save_pointing_at(model, tmp, large, entries, data_final.name)
        elif external.has_deferred(model):  # one protobuf asked for: data inline
            onnx.save_model(external.materialized(model), str(tmp))
        else:
            onnx.save_model(model, str(tmp))
        _fsync(tmp)
        if large:
            if data_final.exists():  # our own old side file: keep it aside to put it back
                restore = (_keep_aside(data_final), data_final)
            os.replace(tmp_data, data_final)
            created.remove(tmp_data)
            created.append(data_final)
        os.replace(tmp, o)
        created.clear()
        _fsync_dir(parent)
    except BaseException as e:
        for p in created:
            _unlink_quietly(p)
        if restore is not None:
            try:
                os.replace(*restore)
            except OSError:
                pass
            restore = None
        if isinstance(e, OSError):
            raise SparsekitError(f"{o}: could not write ({e.strerror or e})") from e
        raise
    finally:
        if restore is not None:
            _unlink_quietly(restore[0])
    # the new model is in place: its predecessor's side files are no one's now
    for f in old_side:
        if data_final is None or f.resolve() != data_final.resolve():
            _unlink_quietly(f)
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


# ---------------------------------------------------------------------------------------------
# side files


def _remember(model_path: Path, side: Iterable[Path]) -> None:
    _external_models[_key(model_path)] = bool(side)
    for f in [model_path, *side]:
        _read_files.add(f.resolve())
        st = os.stat(f)
        _read_ids.add((st.st_dev, st.st_ino))


def _is_read_file(p: Path) -> bool:
    if p.resolve() in _read_files:
        return True
    try:
        st = os.stat(p)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) in _read_ids


def _is_side_file_of(p: Path, model_path: Path) -> bool:
    try:
        m = onnx.load(str(model_path), load_external_data=False)
        side = side_files(m, model_path.parent)
    except Exception:
        return False
    return any(os.path.samefile(p, f) for f in side)


def _own_side_files(o: Path) -> list:
    """Side files of an existing `o` that are its own: named after it, and not read here."""
    if not o.is_file():
        return []
    try:
        m = onnx.load(str(o), load_external_data=False)
        side = side_files(m, o.parent)
    except Exception:  # not a model, or a broken one: it owns nothing we may remove
        return []
    own = re.compile(re.escape(o.name) + r"(\.\d+)?\.data")
    return [f for f in side
            if f.parent.resolve() == o.resolve().parent and own.fullmatch(f.name)
            and not _is_read_file(f)]


def _side_file_name(o: Path, old_side: list) -> str:
    """`OUT.data`, or the first `OUT.N.data` that is free or `o`'s own previous side file."""
    own = {f.name for f in old_side}
    n = 0
    while True:
        name = f"{o.name}.data" if n == 0 else f"{o.name}.{n}.data"
        f = o.resolve().parent / name
        if name in own or (not os.path.lexists(f) and not _is_read_file(f)):
            return name
        n += 1


def _large_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Tensors for the side file: those still on disk (external.py) and inline ones >= 1 KiB."""
    for t in external.all_tensors(model):
        if external.is_deferred(t):
            yield t
        elif t.data_location == onnx.TensorProto.EXTERNAL:
            raise SparsekitError(f"tensor {t.name!r}: its data was never loaded from its side file")
        elif t.HasField("raw_data") and len(t.raw_data) >= _EXTERNAL_THRESHOLD:
            yield t


def _deferred_bytes(t: onnx.TensorProto) -> int:
    return external.source(t)[2] if external.is_deferred(t) else 0


def _write_side_file(tensors: list, path: Path) -> list:
    """Write the tensors' bytes one after another (deferred ones copied from their files in
    chunks); returns their (offset, length)."""
    entries = []
    with open(path, "wb") as f:
        pos = 0
        for t in tensors:
            deferred = external.is_deferred(t)
            n = external.source(t)[2] if deferred else len(t.raw_data)
            align = _PAGE if n >= 64 * _PAGE else 64
            pad = -pos % align
            if pad:
                f.write(b"\0" * pad)
                pos += pad
            if deferred:
                external.copy_to(t, f)
            else:
                f.write(t.raw_data)
            entries.append((pos, n))
            pos += n
        f.flush()
        os.fsync(f.fileno())
    return entries


def _save_pointing_at(model, path: Path, tensors: list, entries: list, location: str) -> None:
    """Serialise `model` with `tensors` replaced by references into `location`.

    The tensors are changed in place only while the model is written (no copy of the weights)
    and restored afterwards, whatever happens.
    """
    saved = []
    try:
        for t, (offset, length) in zip(tensors, entries):
            if external.is_deferred(t):
                saved.append((t, [(e.key, e.value) for e in t.external_data]))
            else:
                saved.append((t, t.raw_data))
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
                e = t.external_data.add()
                e.key, e.value = k, v
        onnx.save_model(model, str(path))
    finally:
        for t, old in saved:
            del t.external_data[:]
            if isinstance(old, list):  # still on disk where it was
                for k, v in old:
                    t.external_data.add(key=k, value=v)
            else:
                t.data_location = onnx.TensorProto.DEFAULT
                t.raw_data = old


def _mkstemp(parent: Path, name: str, mode: int) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    os.chmod(tmp, mode)  # mkstemp makes 0600 files; give them the usual umask permissions
    return Path(tmp)


def _keep_aside(f: Path) -> Path:
    """A hard link to `f` under a temporary name (a rename where links are not supported)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{f.name}.", suffix=".old", dir=f.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(f, tmp)
    except OSError:
        os.replace(f, tmp)
    return Path(tmp)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # not every filesystem syncs directories
        pass
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _key(path: PathLike) -> Path:
    return Path(path).resolve()


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__
