"""Calibration data for one-shot pruning: a few hundred unlabelled input samples.

Two sources (docs/accuracy.md):

* an ``.npz`` keyed by the model's input names; every array holds samples stacked along axis 0
  (its other dims must fit the input's shape; all arrays the same sample count);
* a folder of images with a named preprocessing (``imagenet``: RGB, shorter side resized to
  256/224 of the input size, centre crop, /255, ImageNet mean/std, NCHW) for a model with one
  image input ``[N, 3, H, W]``.

:meth:`Calibration.batches` feeds the samples to onnxruntime: in batches of the input's fixed
leading dim when it has one (e.g. 1), otherwise of ``batch_size``.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import onnx

from .errors import SparsekitError

__all__ = ["Calibration", "load_calibration", "load_npz", "input_specs", "image_size", "imagenet_preprocess",
           "PREPROCESSING", "IMAGE_SUFFIXES"]

PREPROCESSING = ("imagenet",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass
class _InputSpec:
    name: str
    dims: List[Union[int, str, None]]   # int: fixed; str/None: symbolic or unknown
    dtype: np.dtype


@dataclass
class Calibration:
    """Input samples keyed by input name, stacked along axis 0, and how to batch them."""

    inputs: Dict[str, np.ndarray]
    step: int                 # samples per onnxruntime run
    source: str = ""

    @property
    def samples(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    def batches(self) -> Iterator[Dict[str, np.ndarray]]:
        """Feeds of ``step`` samples each (the sample count is a multiple of ``step``)."""
        for i in range(0, self.samples, self.step):
            yield {k: v[i:i + self.step] for k, v in self.inputs.items()}

    def subset(self, limit: int) -> "Calibration":
        """The first ``limit`` samples (rounded down to whole batches, at least one batch)."""
        n = max(self.step, min(limit, self.samples) // self.step * self.step)
        return Calibration({k: v[:n] for k, v in self.inputs.items()}, self.step, self.source)

    def rest(self, skip: int) -> "Calibration":
        """The samples after :meth:`subset` (``skip``) took its own."""
        n = self.subset(skip).samples
        return Calibration({k: v[n:] for k, v in self.inputs.items()}, self.step, self.source)


def input_specs(model: onnx.ModelProto) -> List[_InputSpec]:
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims: List[Union[int, str, None]] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except Exception:
            dtype = np.dtype(np.float32)
        specs.append(_InputSpec(vi.name, dims, dtype))
    return specs


def _batch_step(specs: List[_InputSpec], batch_size: int) -> int:
    """A fixed leading dim is the batch every run must have; symbolic ones take batch_size."""
    fixed = {s.dims[0] for s in specs if s.dims and isinstance(s.dims[0], int)}
    if len(fixed) > 1:
        raise SparsekitError(f"inputs disagree on their leading (batch) dim: {sorted(fixed)}")
    return fixed.pop() if fixed else batch_size


def load_calibration(path, model: onnx.ModelProto, preprocess: Optional[str] = None,
                     batch_size: int = 16, limit: Optional[int] = None) -> Calibration:
    """Read calibration data for ``model`` from an .npz file or an image folder.

    ``limit`` keeps the first samples only.  Every mismatch with the model's inputs is a
    SparsekitError naming the input and the shapes.
    """
    p = Path(path)
    specs = input_specs(model)
    if not specs:
        raise SparsekitError("the model has no inputs to calibrate with")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SparsekitError(f"calibration batch size must be a positive integer, got {batch_size!r}")
    step = _batch_step(specs, batch_size)
    if preprocess is not None and preprocess not in PREPROCESSING:
        raise SparsekitError(f"unknown preprocessing {preprocess!r} (expected {', '.join(PREPROCESSING)})")
    if p.is_dir():
        if preprocess is None:
            raise SparsekitError(f"{p}: a folder of images needs --preprocess "
                                 f"({', '.join(PREPROCESSING)})")
        arrays = _load_images(p, specs)
    elif p.is_file():
        if preprocess is not None:
            raise SparsekitError(f"{p}: --preprocess applies to a folder of images, not to a file")
        arrays = load_npz(p, specs)
    else:
        raise SparsekitError(f"{p}: no such calibration file or folder")
    n = next(iter(arrays.values())).shape[0]
    if limit is not None:
        n = min(n, limit)
        arrays = {k: v[:n] for k, v in arrays.items()}
    if n < step or n % step:
        raise SparsekitError(f"{p}: {n} calibration samples; the model's inputs take batches of {step}, "
                             f"so give a multiple of {step}" if n >= step else
                             f"{p}: {n} calibration samples, fewer than one batch of {step}")
    return Calibration(arrays, step, str(p))


def load_npz(p: Path, specs: List[_InputSpec]) -> Dict[str, np.ndarray]:
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise SparsekitError(f"{p}: not a readable .npz file ({str(e).splitlines()[0] if str(e) else e})") \
            from None
    names = [s.name for s in specs]
    missing = [k for k in names if k not in data]
    if missing:
        has = ", ".join(sorted(data)) or "nothing"
        raise SparsekitError(f"{p}: no array for model input {missing[0]!r} "
                             f"(the file has {has}; inputs: {', '.join(names)})")
    extra = [k for k in data if k not in names]
    if extra:
        raise SparsekitError(f"{p}: array {extra[0]!r} is not a model input (inputs: {', '.join(names)})")
    out, count = {}, None
    for s in specs:
        a = data[s.name]
        if a.ndim != len(s.dims) or a.ndim == 0:
            raise SparsekitError(f"{p}: {s.name!r} has shape {list(a.shape)}, but the input has rank "
                                 f"{len(s.dims)} ({_fmt_dims(s.dims)}); stack samples along axis 0")
        for axis, (got, want) in enumerate(zip(a.shape[1:], s.dims[1:]), start=1):
            if isinstance(want, int) and got != want:
                raise SparsekitError(f"{p}: {s.name!r} has shape {list(a.shape)}, the input is "
                                     f"{_fmt_dims(s.dims)} (axis {axis} differs)")
        if a.dtype.kind not in "biuf" or (a.dtype.kind == "f" and s.dtype.kind in "iu"):
            raise SparsekitError(f"{p}: {s.name!r} has dtype {a.dtype}, the input takes {s.dtype}")
        if count is not None and a.shape[0] != count:
            raise SparsekitError(f"{p}: arrays hold different sample counts ({count} and {a.shape[0]})")
        count = a.shape[0]
        out[s.name] = np.ascontiguousarray(a.astype(s.dtype, copy=False))
    return out


def _fmt_dims(dims) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in dims) + "]"


def image_size(specs: List[_InputSpec]) -> Tuple[str, int, int]:
    if len(specs) != 1:
        raise SparsekitError("image calibration needs a model with exactly one input, this one has "
                             f"{len(specs)}: {', '.join(s.name for s in specs)}")
    s = specs[0]
    if len(s.dims) != 4 or s.dims[1] != 3 or s.dtype != np.float32:
        raise SparsekitError(f"image calibration needs a float input [N, 3, H, W], {s.name!r} is "
                             f"{_fmt_dims(s.dims)} {s.dtype}")
    h, w = s.dims[2], s.dims[3]
    h = h if isinstance(h, int) else 224
    w = w if isinstance(w, int) else h
    return s.name, h, w


def _load_images(folder: Path, specs: List[_InputSpec]) -> Dict[str, np.ndarray]:
    name, h, w = image_size(specs)
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise SparsekitError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    try:
        from PIL import Image
    except ImportError:
        raise SparsekitError("reading images needs Pillow: pip install 'sparsekit[images]'") from None
    batch = np.empty((len(files), 3, h, w), dtype=np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                batch[i] = imagenet_preprocess(im, h, w)
        except (OSError, ValueError) as e:
            raise SparsekitError(f"{f}: not a readable image ({e})") from None
    return {name: batch}


def imagenet_preprocess(image, height: int = 224, width: int = 224) -> np.ndarray:
    """A PIL image -> float32 [3, height, width]: the standard ImageNet evaluation transform."""
    from PIL import Image
    im = image.convert("RGB")
    short = round(min(height, width) * 256 / 224)   # 256 for a 224 input
    scale = short / min(im.size)
    im = im.resize((max(width, round(im.size[0] * scale)), max(height, round(im.size[1] * scale))),
                   Image.BILINEAR)
    left, top = (im.size[0] - width) // 2, (im.size[1] - height) // 2
    im = im.crop((left, top, left + width, top + height))
    x = np.asarray(im, dtype=np.float32) / 255.0
    return ((x - _IMAGENET_MEAN) / _IMAGENET_STD).transpose(2, 0, 1)
