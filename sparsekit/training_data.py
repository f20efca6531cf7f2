"""Training inputs for fine-tuning: a few hundred photos or samples made to go far.

Fine-tuning distils a pruned model towards its dense teacher on inputs only (no labels), so any
input the teacher can label is training data, and the width of the inputs decides whether the
student learns the teacher's function or the handful of photos it was shown (docs/finetune.md).

* A folder of images (``preprocess="imagenet"``): the photos are decoded once (shorter side
  capped at 1.5x the input size), and every training sample is a new random resized crop
  (torchvision's sampling: area 10-100%, aspect 3/4-4/3), flipped half the time, with mild colour
  jitter; then a fraction of each batch is mixed with another sample (mixup or a cutmix
  rectangle). Held-back *photos* (not crops of the training photos) give the evaluation set:
  the centre crop plus fixed random crops of each.
* An ``.npz`` of input samples (keyed by input name, stacked on axis 0): image-shaped float
  inputs ``[N, C, H, W]`` get crops of themselves, flips and mixing; other float inputs get
  mixing; integer inputs (token ids) are used as they are.
* ``synthetic``: a fraction of every image batch replaced by procedural images (dead leaves:
  occluding discs of power-law sizes; spectral noise with a 1/f^a amplitude spectrum) that
  widen the input distribution without any user data.

This module needs torch (interpolation on uint8 photos); it is imported only by fine-tuning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .calibration import (IMAGE_SUFFIXES, PREPROCESSING, image_size, input_specs, load_npz,
                          imagenet_preprocess)
from .errors import SparsekitError

__all__ = ["TrainingData", "load_training_data", "procedural_images", "photo_crops"]

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
CROP_SCALE = (0.10, 1.0)      # wider than ImageNet training's 0.08-1 lower end is not needed
CROP_RATIO = (3 / 4, 4 / 3)
NPZ_CROP_SCALE = (0.35, 1.0)  # samples are already crops: keep most of each
JITTER = 0.25                 # brightness / contrast / saturation factors in [1-J, 1+J]


def _crop_box(rng: np.random.Generator, h: int, w: int, scale=CROP_SCALE) -> Tuple[int, int, int, int]:
    """A random resized crop's box (top, left, height, width): area fraction uniform, aspect
    log-uniform, 10 tries, else the whole image."""
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    return 0, 0, h, w


def _resized_crop(img: torch.Tensor, box, size: Tuple[int, int]) -> torch.Tensor:
    """[C, h, w] (uint8 or float) -> float [C, H, W] of the box, antialiased bilinear."""
    t, l, ch, cw = box
    patch = img[:, t:t + ch, l:l + cw].float().unsqueeze(0)
    return F.interpolate(patch, size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def _jitter(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter of one RGB image in [0, 1]."""
    b, c, s = (1 + rng.uniform(-JITTER, JITTER, 3)).tolist()
    x = x * b
    x = (x - x.mean()) * c + x.mean()
    gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)
    x = (x - gray) * s + gray
    return x.clamp(0.0, 1.0)


def _mix(batch: torch.Tensor, rng: np.random.Generator, fraction: float) -> torch.Tensor:
    """Mix a fraction of the samples with another one of the batch: half by mixup (a convex
    combination), half by cutmix (a rectangle of the other pasted in)."""
    n = batch.shape[0]
    if n < 2 or fraction <= 0:
        return batch
    out = batch.clone()
    for i in np.flatnonzero(rng.random(n) < fraction):
        j = int(rng.integers(0, n - 1))
        j += j >= i
        if batch.dim() == 4 and rng.random() < 0.5:
            h, w = batch.shape[2], batch.shape[3]
            area = rng.uniform(0.2, 0.6)
            ch, cw = max(1, round(h * math.sqrt(area))), max(1, round(w * math.sqrt(area)))
            t, l = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            out[i, :, t:t + ch, l:l + cw] = batch[j, :, t:t + ch, l:l + cw]
        else:
            lam = float(rng.uniform(0.3, 0.7))
            out[i] = lam * batch[i] + (1 - lam) * batch[j]
    return out


def procedural_images(n: int, size: Tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """``n`` RGB images in [0, 1], [n, 3, H, W]: each dead leaves or spectral noise at random.

    Dead leaves (discs of radius ~ r^-3 between 1% and 40% of the side, random colours, later
    discs occluding earlier ones) have the edge and scale statistics of natural images; spectral
    noise has their 1/f amplitude spectrum with a random exponent and colour mixing.
    """
    h, w = size
    out = torch.empty(n, 3, h, w)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    for k in range(n):
        if rng.random() < 0.5:
            img = torch.from_numpy(rng.random(3).astype(np.float32)).view(3, 1, 1).expand(3, h, w).clone()
            side = min(h, w)
            rmin, rmax = 0.01 * side, 0.4 * side
            for _ in range(int(rng.integers(40, 160))):
                # inverse-CDF sample of a density ~ r^-3 on [rmin, rmax]
                u = rng.random()
                r = 1.0 / math.sqrt((1 - u) / rmin ** 2 + u / rmax ** 2)
                cy, cx = rng.uniform(-r, h + r), rng.uniform(-r, w + r)
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                img[:, disc] = torch.from_numpy(rng.random(3).astype(np.float32)).view(3, 1)
        else:
            a = rng.uniform(1.0, 2.2)
            fy = torch.fft.fftfreq(h).view(h, 1)
            fx = torch.fft.rfftfreq(w).view(1, -1)
            amp = 1.0 / torch.clamp(torch.sqrt(fy ** 2 + fx ** 2), min=1.0 / max(h, w)) ** a
            phase = torch.from_numpy(rng.uniform(0, 2 * math.pi, (3,) + tuple(amp.shape)).astype(np.float32))
            chans = torch.fft.irfft2(amp * torch.exp(1j * phase), s=(h, w))
            mixing = torch.from_numpy(rng.normal(size=(3, 3)).astype(np.float32))
            img = torch.einsum("ij,jhw->ihw", mixing, chans)
            lo = img.amin(dim=(1, 2), keepdim=True)
            hi = img.amax(dim=(1, 2), keepdim=True)
            img = (img - lo) / (hi - lo + 1e-8)
        out[k] = img
    return out


@dataclass
class TrainingData:
    """Training inputs (augmented on demand) and a fixed evaluation set, keyed by input name."""

    source: str
    kind: str                              # "images" or "npz"
    input_names: List[str]
    train_count: int                       # photos or samples available for training
    eval_inputs: Dict[str, np.ndarray]     # fixed, held back from training
    eval_source: str                       # what the evaluation samples are
    step: int                              # samples per model run (a fixed leading dim, else 0)
    _photos: Optional[List[torch.Tensor]] = None         # uint8 [3, h, w], images only
    _samples: Optional[Dict[str, np.ndarray]] = None     # npz only
    _size: Tuple[int, int] = (224, 224)   # training crops
    full_size: Tuple[int, int] = (224, 224)   # the model's input size (the evaluation's)

    def use_full_size(self) -> None:
        """Training crops at the model's own size from now on (after ``train_size`` ones)."""
        self._size = self.full_size

    def image_like(self) -> List[str]:
        """Inputs that are float [N, C, H, W] images (those get crops, flips and procedural images)."""
        if self.kind == "images":
            return list(self.input_names)
        out = []
        for k, a in (self._samples or {}).items():
            if a.dtype.kind == "f" and a.ndim == 4 and a.shape[1] in (1, 3, 4) and min(a.shape[2:]) >= 8:
                out.append(k)
        return out

    def add_photos(self, photos: List[torch.Tensor]) -> None:
        """More training photos (uint8 [3, h, w]; e.g. images synthesised from the teacher,
        inversion.py): they get the same crops, flips and mixing as the others."""
        if self.kind != "images":
            raise SparsekitError("photos can be added to a folder of images only")
        self._photos = list(self._photos) + list(photos)
        self.train_count += len(photos)

    def batch(self, n: int, rng: np.random.Generator, augment: bool = True, mix: float = 0.5,
              synthetic: float = 0.0) -> Dict[str, np.ndarray]:
        """``n`` fresh training samples."""
        if self.kind == "images":
            return {self.input_names[0]: self._image_batch(n, rng, augment, mix, synthetic).numpy()}
        return self._npz_batch(n, rng, augment, mix, synthetic)

    def _image_batch(self, n, rng, augment, mix, synthetic) -> torch.Tensor:
        n_syn = int(rng.binomial(n, synthetic)) if synthetic > 0 else 0
        real = []
        for _ in range(n - n_syn):
            img = self._photos[int(rng.integers(0, len(self._photos)))]
            if augment:
                x = _resized_crop(img, _crop_box(rng, img.shape[1], img.shape[2]), self._size) / 255.0
                if rng.random() < 0.5:
                    x = x.flip(-1)
                x = _jitter(x, rng)
            else:
                x = _resized_crop(img, (0, 0, img.shape[1], img.shape[2]), self._size) / 255.0
            real.append(x.clamp(0.0, 1.0))
        parts = ([torch.stack(real)] if real else []) + \
                ([procedural_images(n_syn, self._size, rng)] if n_syn else [])
        batch = torch.cat(parts)[torch.from_numpy(rng.permutation(n))]
        if augment:
            batch = _mix(batch, rng, mix)
        return (batch - _MEAN) / _STD

    def _npz_batch(self, n, rng, augment, mix, synthetic) -> Dict[str, np.ndarray]:
        if self.step > 1:
            # a fixed leading dim k (e.g. a sequence-first [35, 1] input): the rows of one run
            # belong together, as prune's calibration reads them; whole runs, no augmentation
            runs = rng.integers(0, self.train_count // self.step, max(1, n // self.step))
            idx = (runs[:, None] * self.step + np.arange(self.step)).ravel()
            return {k: v[idx].copy() for k, v in self._samples.items()}
        idx = rng.integers(0, self.train_count, n)
        out = {k: v[idx].copy() for k, v in self._samples.items()}
        if not augment:
            return out
        images = self.image_like()
        for k in images:
            x = torch.from_numpy(out[k])
            h, w = x.shape[2], x.shape[3]
            for i in range(n):
                x[i] = _resized_crop(x[i], _crop_box(rng, h, w, NPZ_CROP_SCALE), (h, w))
                if rng.random() < 0.5:
                    x[i] = x[i].flip(-1)
            if synthetic > 0 and x.shape[1] == 3:
                # procedural images brought to these samples' per-channel statistics
                n_syn = int(rng.binomial(n, synthetic))
                if n_syn:
                    syn = procedural_images(n_syn, (h, w), rng)
                    mean = x.mean(dim=(0, 2, 3), keepdim=True)
                    std = x.std(dim=(0, 2, 3), keepdim=True)
                    syn = (syn - syn.mean(dim=(0, 2, 3), keepdim=True)) / \
                        (syn.std(dim=(0, 2, 3), keepdim=True) + 1e-6) * std + mean
                    x[rng.choice(n, n_syn, replace=False)] = syn
            out[k] = x.numpy()
        # mixing is only meaningful when every input is a float that can be blended consistently
        if all(v.dtype.kind == "f" for v in out.values()) and mix > 0 and n >= 2:
            gen_state = rng.bit_generator.state
            for k in out:
                rng.bit_generator.state = gen_state      # the same partners for every input
                out[k] = _mix(torch.from_numpy(out[k]), rng, mix).numpy()
        return out


def _split(n: int, holdout: float, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (train, held back): ``holdout`` of them held back, at least one each when n >= 2."""
    order = rng.permutation(n)
    k = 0 if holdout <= 0 or n < 2 else min(n - 1, max(1, round(holdout * n)))
    return np.sort(order[k:]), np.sort(order[:k])


def load_training_data(path, model, preprocess: Optional[str] = None, holdout: float = 0.1,
                       eval_path=None, eval_crops: int = 8, seed: int = 0,
                       train_size: Optional[int] = None) -> TrainingData:
    """Read a folder of images (``preprocess="imagenet"``) or an .npz of samples for ``model``.

    ``holdout`` of the photos (or samples) are kept out of training for the evaluation set, unless
    ``eval_path`` gives a separate one (same kind of data).  Images in the evaluation set are the
    centre crop plus ``eval_crops - 1`` fixed random crops of each held-back photo.
    ``train_size``: training crops of ``train_size`` x ``train_size`` pixels instead of the
    model's input size (a folder of images only; evaluation stays at the model's size).
    """
    p = Path(path)
    specs = input_specs(model)
    if not specs:
        raise SparsekitError("the model has no inputs to train with")
    if not 0.0 <= holdout < 1.0:
        raise SparsekitError(f"holdout must be in [0, 1), got {holdout}")
    fixed = {s.dims[0] for s in specs if s.dims and isinstance(s.dims[0], int)}
    step = fixed.pop() if len(fixed) == 1 else 0
    rng = np.random.default_rng(seed)
    if preprocess is not None and preprocess not in PREPROCESSING:
        raise SparsekitError(f"unknown preprocessing {preprocess!r} (expected {', '.join(PREPROCESSING)})")
    if p.is_dir():
        if preprocess is None:
            raise SparsekitError(f"{p}: a folder of images needs --preprocess ({', '.join(PREPROCESSING)})")
        name, h, w = image_size(specs)
        files = _image_files(p)
        train_i, held_i = _split(len(files), 0.0 if eval_path is not None else holdout, rng)
        photos = [_decode(files[i], max(h, w)) for i in train_i]
        size = (int(train_size), int(train_size)) if train_size else (h, w)
        data = TrainingData(str(p), "images", [name], len(photos), {}, "", step,
                            _photos=photos, _size=size, full_size=(h, w))
        if eval_path is not None:
            data.eval_inputs, data.eval_source = _eval_set(Path(eval_path), model, preprocess, specs,
                                                           eval_crops, seed)
        elif len(held_i):
            data.eval_inputs = {name: photo_crops([files[i] for i in held_i], (h, w), eval_crops, seed)}
            shown = ", ".join(files[i].name for i in held_i[:4]) + (", ..." if len(held_i) > 4 else "")
            data.eval_source = f"{len(held_i)} held-back photos x {eval_crops} crops ({shown})"
        return data
    if not p.is_file():
        raise SparsekitError(f"{p}: no such data file or folder")
    if preprocess is not None:
        raise SparsekitError(f"{p}: --preprocess applies to a folder of images, not to a file")
    if train_size:
        raise SparsekitError(f"{p}: --train-size applies to a folder of images, not to an .npz "
                             "(its samples are used at their own size)")
    arrays = load_npz(p, specs)
    n = next(iter(arrays.values())).shape[0]
    unit = max(step, 1)   # rows per sample: whole runs of a fixed leading dim
    if n < unit or n % unit:
        raise SparsekitError(f"{p}: {n} rows; the model's inputs take runs of {unit} rows, so give a "
                             f"multiple of {unit}")
    runs_train, runs_held = _split(n // unit, 0.0 if eval_path is not None else holdout, rng)
    train_i = (runs_train[:, None] * unit + np.arange(unit)).ravel()
    held_i = (runs_held[:, None] * unit + np.arange(unit)).ravel()
    data = TrainingData(str(p), "npz", [s.name for s in specs], len(train_i), {}, "", step,
                        _samples={k: v[train_i] for k, v in arrays.items()})
    if eval_path is not None:
        data.eval_inputs, data.eval_source = _eval_set(Path(eval_path), model, None, specs, eval_crops, seed)
    elif len(held_i):
        data.eval_inputs = {k: v[held_i] for k, v in arrays.items()}
        data.eval_source = f"{len(held_i)} held-back samples of {p.name}"
    return data


def _eval_set(p: Path, model, preprocess, specs, eval_crops, seed) -> Tuple[Dict[str, np.ndarray], str]:
    if p.is_dir():
        if preprocess is None:
            raise SparsekitError(f"{p}: a folder of images needs --preprocess ({', '.join(PREPROCESSING)})")
        name, h, w = image_size(specs)
        files = _image_files(p)
        return ({name: photo_crops(files, (h, w), eval_crops, seed)},
                f"{len(files)} photos of {p} x {eval_crops} crops")
    if not p.is_file():
        raise SparsekitError(f"{p}: no such evaluation file or folder")
    arrays = load_npz(p, specs)
    return arrays, f"{next(iter(arrays.values())).shape[0]} samples of {p.name}"


def _image_files(folder: Path) -> List[Path]:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise SparsekitError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _open(f: Path):
    try:
        from PIL import Image
    except ImportError:
        raise SparsekitError("reading images needs Pillow: pip install 'sparsekit[images]'") from None
    try:
        im = Image.open(f)
        im.load()
        return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise SparsekitError(f"{f}: not a readable image ({e})") from None


def _decode(f: Path, side: int) -> torch.Tensor:
    """A photo as uint8 [3, h, w], its shorter side at most 1.5x the input's (crops lose nothing
    a 224-pixel input could show, and memory stays small for multi-megapixel photos)."""
    from PIL import Image
    im = _open(f)
    cap = int(side * 1.5)
    s = cap / min(im.size)
    if s < 1:
        im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def photo_crops(files: List[Path], size: Tuple[int, int], per_photo: int, seed: int) -> np.ndarray:
    """The ImageNet evaluation crop of each photo plus ``per_photo - 1`` fixed random crops."""
    h, w = size
    rng = np.random.default_rng(seed + 7919)   # fixed crops, independent of the training stream
    out = []
    for f in files:
        im = _open(f)
        out.append(imagenet_preprocess(im, h, w))
        img = _decode(f, max(h, w))
        for _ in range(per_photo - 1):
            x = _resized_crop(img, _crop_box(rng, img.shape[1], img.shape[2], (0.25, 1.0)), size) / 255.0
            out.append(((x.unsqueeze(0).clamp(0, 1) - _MEAN) / _STD)[0].numpy())
    return np.stack(out).astype(np.float32)
