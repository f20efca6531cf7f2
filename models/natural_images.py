"""Deterministic ImageNet-style crops of the natural photos bundled with scikit-image.

Real photos give realistic activation statistics for calibrating and evaluating a pruned ImageNet
model without a data set download. Only images that ship inside the scikit-image wheel are used
(no pooch fetch). The splits use disjoint source images, so calibration and evaluation crops never
share pixels; each side gets a similar mix of subjects:

    split        colour photos                                      grayscale photos (as 3 channels)
    calibration  astronaut, rocket, hubble_deep_field, immunohisto  camera, coins, grass, brick, page
    evaluation   chelsea, coffee, motorcycle (left+right), retina   moon, gravel, text, clock

Left out: ``cat`` (the same pixels as ``chelsea``), synthetic images (colorwheel, logo,
checkerboard, horse, phantom, blobs) and tiny ones (lfw_subset, microaneurysms).

    python -m models.natural_images OUT.npz --split calibration --n 256 --input-name input
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

SPLITS: Dict[str, List[str]] = {
    "calibration": ["astronaut", "rocket", "hubble_deep_field", "immunohistochemistry",
                    "camera", "coins", "grass", "brick", "page"],
    # the stereo pair is one scene: both views stay in one split and count as one source
    "evaluation": ["chelsea", "coffee", "motorcycle", "retina", "moon", "gravel", "text", "clock"],
}
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
SCALE = (0.25, 1.0)
RATIO = (3 / 4, 4 / 3)


def _skimage():
    try:
        import skimage.data
    except ImportError:
        from sparsekit.errors import SparsekitError

        raise SparsekitError("natural-image crops need scikit-image: pip install scikit-image") from None
    return skimage.data


@functools.lru_cache(maxsize=None)
def source(name: str) -> List[np.ndarray]:
    """The uint8 HxWx3 views of one source scene (two for the stereo motorcycle, else one)."""
    data = _skimage()
    loaders: Dict[str, Callable] = {"motorcycle": lambda: data.stereo_motorcycle()[:2]}
    images = loaders[name]() if name in loaders else [getattr(data, name)()]
    # grayscale photos are replicated to 3 channels, as an RGB decode of them would be
    return [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im[..., :3] for im in images]


def _crop_box(rng: np.random.Generator, h: int, w: int):
    # torchvision RandomResizedCrop's sampling: area fraction uniform, aspect ratio log-uniform,
    # up to 10 tries to fit, else the largest centred crop with a clamped ratio
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        ratio = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    ratio = min(max(w / h, RATIO[0]), RATIO[1])
    cw, ch = (w, round(w / ratio)) if w / h < ratio else (round(h * ratio), h)
    ch, cw = min(ch, h), min(cw, w)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def crops(split: str, n: int, size: int = 224, seed: int = 0, disjoint: str = "photos") -> np.ndarray:
    """``n`` ImageNet-normalised crops ``[n, 3, size, size]`` float32 of ``split``'s images.

    ``disjoint="photos"``: each split crops its own photos (the table above: a change of
    subject between calibration and evaluation).  ``disjoint="halves"``: both splits crop every
    photo, calibration from the left half and evaluation from the right half of each (no shared
    pixels, same subjects: calibration data from the deployment distribution).
    Deterministic in (split, n, size, seed, disjoint); the first k crops of a call with n > k equal
    the crops of the call with n = k, so a longer set extends a shorter one.
    """
    from PIL import Image

    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if disjoint not in ("photos", "halves"):
        raise ValueError(f"disjoint must be 'photos' or 'halves', got {disjoint!r}")
    names = SPLITS[split] if disjoint == "photos" else SPLITS["calibration"] + SPLITS["evaluation"]
    # an independent stream per split, so equal seeds do not repeat crop geometry across splits
    rng = np.random.default_rng([seed, list(SPLITS).index(split), int(disjoint == "halves")])
    out = np.empty((n, 3, size, size), np.float32)
    for k in range(n):
        views = source(names[int(rng.integers(len(names)))])
        image = views[int(rng.integers(len(views)))]
        if disjoint == "halves":
            half = image.shape[1] // 2
            image = image[:, :half] if split == "calibration" else image[:, half:]
        top, left, ch, cw = _crop_box(rng, *image.shape[:2])
        patch = image[top:top + ch, left:left + cw]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        # PIL bilinear on uint8, as torchvision's PIL pipeline resizes before ToTensor
        pixels = np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), Image.BILINEAR))
        out[k] = ((pixels.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    return out


def to_uint8(batch: np.ndarray) -> np.ndarray:
    """Undo the normalisation: ``[n, 3, h, w]`` float32 -> ``[n, h, w, 3]`` uint8, for viewing."""
    pixels = batch.transpose(0, 2, 3, 1) * STD + MEAN
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def save_grid(batch: np.ndarray, path: str, cols: int = 8) -> None:
    """Write crops as one PNG grid (2 px gaps) to eyeball what a split looks like."""
    from PIL import Image

    images = to_uint8(batch)
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = im
    Image.fromarray(grid).save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.natural_images",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .npz to write")
    parser.add_argument("--split", choices=sorted(SPLITS), default="calibration")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-name", default="input", help="the model input the array feeds (npz key)")
    parser.add_argument("--grid", type=Path, help="also write the first 32 crops as a PNG grid")
    parser.add_argument("--disjoint", choices=("photos", "halves"), default="photos",
                        help="split by photo, or by the left/right half of every photo")
    args = parser.parse_args(argv)
    if args.n < 1 or args.size < 8:
        parser.error("--n must be >= 1 and --size >= 8")
    batch = crops(args.split, args.n, size=args.size, seed=args.seed, disjoint=args.disjoint)
    with open(args.out, "wb") as f:  # a file object keeps numpy from appending ".npz" to the name
        np.savez(f, **{args.input_name: batch})
    if args.grid:
        save_grid(batch[:32], str(args.grid))
    print(f"wrote {args.out}: {args.input_name} {list(batch.shape)} ({args.split}, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
