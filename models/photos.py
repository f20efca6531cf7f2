"""Every natural photograph this machine can reach offline, split into train and evaluation photos.

Fine-tuning a pruned ImageNet model needs more photos than the 17 of models/natural_images.py.
This module lists, by hand, the real photographs (landscapes, plants, animals, insects, food,
objects, buildings, people) that ship inside Python wheels and Debian packages, and splits them
into **train** and **evaluation** photos that never share a scene. Nothing is downloaded at run
time: a photo whose package is not installed is skipped, with the command that installs it.

    source                       install (download)     photos  what
    scikit-image                 pip                        18  the photos of models/natural_images.py
    scikit-learn                 pip                         2  china (a temple), flower
    matplotlib                   pip                         1  grace_hopper
    mate-backgrounds             apt (47 MB)                12  MATE's "nature" set
    lxqt-themes                  apt (26 MB)                11  LXQt's photo wallpapers
    lomiri-wallpapers-16.04      apt (16 MB)                13  Ubuntu 16.04's photo wallpapers
    lomiri-wallpapers-20.04      apt (11 MB)                 1  Kleiber (a nuthatch)
    plasma-workspace-wallpapers  apt (94 MB)                11  Plasma's photo wallpapers
    opencv-doc                   apt (96 MB, 274 on disk)   37  OpenCV's sample photos (examples/)
    all                                                    106  of 100 scenes; train: 65 photos of 64
                                                                scenes, evaluation: 41 of 36

    apt-get install --no-install-recommends mate-backgrounds lxqt-themes lomiri-wallpapers-16.04 \\
        lomiri-wallpapers-20.04 plasma-workspace-wallpapers opencv-doc

Subjects: animal, building (and street), document, food, insect, landscape, object, person,
plant, science (telescope, microscope, retina, moon), texture, vehicle. Wallpapers are 1280 to
6028 pixels wide; the OpenCV and library photos 256 to 1282. Some are grayscale (replicated to 3
channels, as natural_images.py does).

Left out after looking at every image: rendered, abstract and vector art (GNOME 43's and UKUI's
backgrounds, most Plasma wallpapers, MATE's "abstract" and "desktop" sets, LXQt's logo
wallpapers, lomiri's Fossa, Infinite-Sea and Painting-Colors), photos of paintings (OpenCV's
starry_night and graf*), near duplicates (OpenCV's ela_modified), calibration targets, masks,
documents and screenshots (OpenCV's left*/right*, sudoku, stanford) and clip art.

The split is written in the table (not computed), so adding a photo never moves another.
Photos of one scene (the stereo pairs and consecutive frames: motorcycle, aloe, aero, basketball,
leuven, rubberwhale) share a ``group`` and a split. The scikit-image photos keep the split of
models/natural_images.py (its calibration photos are train photos here, its evaluation photos are
evaluation photos), so crops from either module never evaluate on a training photo. About a third
of the scenes of every subject are evaluation scenes.

    python -m models.photos list
    python -m models.photos export DIR --split train|evaluation|all [--limit N]
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

SPLITS = ("train", "evaluation")
SHORT_SIDE = 512
QUALITY = 92

# Debian packages that hold photos, in the order of the install command
APT_PACKAGES: Tuple[str, ...] = ("mate-backgrounds", "lxqt-themes", "lomiri-wallpapers-16.04",
                                 "lomiri-wallpapers-20.04", "plasma-workspace-wallpapers", "opencv-doc")
# pip distribution -> the import package whose folder holds its sample photos
PIP_PACKAGES: Dict[str, str] = {"scikit-image": "skimage", "scikit-learn": "sklearn",
                                "matplotlib": "matplotlib"}
APT_INSTALL = "apt-get install --no-install-recommends " + " ".join(APT_PACKAGES)
PIP_INSTALL = "pip install " + " ".join(PIP_PACKAGES)


@dataclass(frozen=True)
class Photo:
    """One photograph: where it lives, what it shows, and which split it belongs to."""

    name: str     # unique; the exported file is ``{name}.jpg``
    source: str   # the apt package or pip distribution that ships the file
    path: str     # absolute for an apt package, else relative to the pip package's folder
    subject: str
    split: str    # "train" or "evaluation"
    group: str    # one scene: photos of one group always share a split

    @property
    def install(self) -> str:
        """The command that installs this photo's package."""
        if self.source in PIP_PACKAGES:
            return f"pip install {self.source}"
        return f"apt-get install --no-install-recommends {self.source}"


_T, _E = "train", "evaluation"

# (source, path pattern, rows); a row is (name, file, subject, split[, group]), its path the
# pattern with "{}" replaced by the file; a group (one scene) defaults to the photo's name
_TABLE: Tuple[Tuple[str, str, Tuple[tuple, ...]], ...] = (
    # models/natural_images.py's photos: its calibration photos train here, its evaluation ones evaluate
    ("scikit-image", "data/{}", (
        ("skimage-astronaut", "astronaut.png", "person", _T),
        ("skimage-rocket", "rocket.jpg", "vehicle", _T),
        ("skimage-hubble", "hubble_deep_field.jpg", "science", _T),
        ("skimage-ihc", "ihc.png", "science", _T),
        ("skimage-camera", "camera.png", "person", _T),                   # grayscale
        ("skimage-coins", "coins.png", "object", _T),                     # grayscale
        ("skimage-grass", "grass.png", "texture", _T),                    # grayscale
        ("skimage-brick", "brick.png", "texture", _T),                    # grayscale
        ("skimage-page", "page.png", "document", _T),                     # grayscale
        ("skimage-chelsea", "chelsea.png", "animal", _E),
        ("skimage-coffee", "coffee.png", "food", _E),
        ("skimage-motorcycle-left", "motorcycle_left.png", "vehicle", _E, "skimage-motorcycle"),
        ("skimage-motorcycle-right", "motorcycle_right.png", "vehicle", _E, "skimage-motorcycle"),
        ("skimage-retina", "retina.jpg", "science", _E),
        ("skimage-moon", "moon.png", "science", _E),                      # grayscale
        ("skimage-gravel", "gravel.png", "texture", _E),                  # grayscale
        ("skimage-text", "text.png", "document", _E),                     # grayscale
        ("skimage-clock", "clock_motion.png", "object", _E),              # grayscale
    )),
    # sklearn.datasets.load_sample_images (640x427)
    ("scikit-learn", "datasets/images/{}", (
        ("sklearn-china", "china.jpg", "building", _E),
        ("sklearn-flower", "flower.jpg", "plant", _E),
    )),
    ("matplotlib", "mpl-data/sample_data/{}", (
        ("mpl-grace-hopper", "grace_hopper.jpg", "person", _T),
    )),
    # MATE's "nature" set (1280x1024 to 2560x1920)
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/{}", (
        ("mate-aqua", "Aqua.jpg", "texture", _E),                         # a splash
        ("mate-blinds", "Blinds.jpg", "plant", _T),                       # a leaf
        ("mate-dune", "Dune.jpg", "landscape", _T),
        ("mate-fresh-flower", "FreshFlower.jpg", "plant", _T),
        ("mate-garden", "Garden.jpg", "plant", _T),
        ("mate-green-meadow", "GreenMeadow.jpg", "plant", _T),
        ("mate-ladybird", "LadyBird.jpg", "insect", _E),
        ("mate-rain-drops", "RainDrops.jpg", "plant", _E),
        ("mate-storm", "Storm.jpg", "landscape", _E),
        ("mate-two-wings", "TwoWings.jpg", "plant", _T),                  # dandelion seeds
        ("mate-wood", "Wood.jpg", "texture", _T),
        ("mate-yellow-flower", "YellowFlower.jpg", "plant", _E),
    )),
    # LXQt's photo wallpapers (1920x1277 to 3000x1994)
    ("lxqt-themes", "/usr/share/lxqt/wallpapers/{}", (
        ("lxqt-butterfly-wimer", "Butterfly-Kenneth-Wimer.jpg", "insect", _T),
        # Valendas and beam: dark mountains under cloud, perhaps one place: one split
        ("lxqt-valendas", "Valendas.png", "landscape", _E),
        ("lxqt-beam", "beam.png", "landscape", _E),
        ("lxqt-after-the-rain", "after-the-rain.jpg", "landscape", _T),
        ("lxqt-appleflower", "appleflower.png", "plant", _E),
        ("lxqt-butterfly", "butterfly.png", "insect", _T),
        ("lxqt-cloud", "cloud.png", "landscape", _T),
        ("lxqt-drop", "drop.png", "plant", _T),
        ("lxqt-flowers", "flowers.png", "plant", _T),
        ("lxqt-fog", "fog.jpg", "landscape", _T),
        ("lxqt-hills", "this-is-not-windows.jpg", "landscape", _T),
    )),
    # Ubuntu 16.04's photo wallpapers (1365x1074 to 5312x2988)
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/{}", (
        ("lomiri-bridge", "Bridge_by_Sander_Klootwijk.jpg", "building", _T),
        ("lomiri-dragonfly", "Dragonfly_by_Bolly.jpg", "insect", _T),
        ("lomiri-fig", "Picture_0B_by_freespace.jpg", "food", _T),
        ("lomiri-brushes", "Picture_1A_by_freespace.jpg", "object", _T),
        ("lomiri-wine", "Wine_by_Jakkub_Mede.jpg", "object", _E),
        ("lomiri-aitzgorri", "aitzgorri_by_Aitzol_Berasategi.jpg", "landscape", _T),
        ("lomiri-bird-lamp", "free_by_Peter_Nerlich.jpg", "object", _T),
        ("lomiri-dogs", "friends_by_Aitzol_Berasategi.jpg", "animal", _T),
        ("lomiri-wall-clock", "greentock_by_Peter_Nerlich.jpg", "object", _T),
        ("lomiri-stream", "life_by_Aitzol_Berasategi.jpg", "landscape", _T),
        ("lomiri-picos", "picosdeeuropa_by_Aitzol_Berasategi.jpg", "landscape", _E),
        ("lomiri-dandelions", "seeding_by_Clements_Engelhardt.jpg", "plant", _T),
        ("lomiri-sunset", "sunset_by_Aitzol_Berasategi.jpg", "landscape", _T),
    )),
    # Ubuntu 20.04's one photo wallpaper (6028x3391)
    ("lomiri-wallpapers-20.04", "/usr/share/backgrounds/{}", (
        ("lomiri-nuthatch", "Kleiber_by_Lukas_Baubkus.jpg", "animal", _E),
    )),
    # Plasma's photo wallpapers, each in its one real size (the other sizes are links to it)
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/{}/contents/images/2560x1600.jpg", (
        ("plasma-by-the-water", "BytheWater", "landscape", _T),
        ("plasma-cold-ripple", "ColdRipple", "landscape", _E),
        ("plasma-cups", "ColorfulCups", "object", _E),
        ("plasma-darkest-hour", "DarkestHour", "landscape", _T),
        ("plasma-boats", "EveningGlow", "landscape", _T),
        ("plasma-fallen-leaf", "FallenLeaf", "plant", _T),
        ("plasma-facade", "Grey", "building", _T),
        ("plasma-kite", "Kite", "landscape", _T),
        ("plasma-one-stands-out", "OneStandsOut", "plant", _E),
        ("plasma-forest-path", "Path", "landscape", _E),
        ("plasma-lake-dusk", "summer_1am", "landscape", _T),
    )),
    # the sample photos of OpenCV's examples (256x256 to 1282x1110)
    ("opencv-doc", "/usr/share/doc/opencv-doc/examples/{}", (
        ("opencv-houseplant", "alphamat/input_images/plant.jpg", "plant", _T),
        ("opencv-aero-1", "data/aero1.jpg", "landscape", _T, "opencv-aero"),    # aerial, one flight
        ("opencv-aero-3", "data/aero3.jpg", "landscape", _T, "opencv-aero"),
        ("opencv-aloe-left", "data/aloeL.jpg", "plant", _E, "opencv-aloe"),     # a stereo pair
        ("opencv-aloe-right", "data/aloeR.jpg", "plant", _E, "opencv-aloe"),
        ("opencv-apple", "data/apple.jpg", "food", _T),
        ("opencv-baboon", "data/baboon.jpg", "animal", _T),
        ("opencv-basketball-1", "data/basketball1.png", "person", _E, "opencv-basketball"),  # grayscale
        ("opencv-basketball-2", "data/basketball2.png", "person", _E, "opencv-basketball"),  # frames
        ("opencv-circuit-board", "data/board.jpg", "object", _T),
        ("opencv-box-in-scene", "data/box_in_scene.png", "object", _T),     # grayscale
        ("opencv-hotel", "data/building.jpg", "building", _T),
        ("opencv-butterfly", "data/butterfly.jpg", "insect", _T),
        ("opencv-dog", "data/chicky_512.png", "animal", _T),
        ("opencv-notebook", "data/ela_original.jpg", "object", _T),         # not ela_modified, its copy
        ("opencv-fruits", "data/fruits.jpg", "food", _T),
        ("opencv-palace", "data/home.jpg", "building", _T),
        ("opencv-leuven-a", "data/leuvenA.jpg", "building", _E, "opencv-leuven"),  # one street
        ("opencv-leuven-b", "data/leuvenB.jpg", "building", _E, "opencv-leuven"),
        ("opencv-car", "data/licenseplate_motion.jpg", "vehicle", _T),
        ("opencv-footballer", "data/messi5.jpg", "person", _E),
        ("opencv-orange", "data/orange.jpg", "food", _E),
        ("opencv-rubberwhale-1", "data/rubberwhale1.png", "object", _E, "opencv-rubberwhale"),  # frames
        ("opencv-rubberwhale-2", "data/rubberwhale2.png", "object", _E, "opencv-rubberwhale"),
        ("opencv-squirrel", "data/squirrel_cls.jpg", "animal", _E),
        ("opencv-desk", "data/stuff.jpg", "object", _T),
        ("opencv-monarch-wing", "dnn_superres/butterfly.png", "insect", _E),
        ("opencv-robin", "hfs/data/000.jpg", "animal", _T),
        ("opencv-lake", "hfs/data/001.jpg", "landscape", _E),
        ("opencv-tree", "hfs/data/002.jpg", "plant", _T),
        ("opencv-brick-house", "reg/home.png", "building", _T),
        ("opencv-street-1", "text/scenetext01.jpg", "building", _T),
        ("opencv-street-2", "text/scenetext02.jpg", "building", _T),
        ("opencv-street-3", "text/scenetext03.jpg", "building", _E),
        ("opencv-street-4", "text/scenetext04.jpg", "building", _T),
        ("opencv-street-5", "text/scenetext05.jpg", "building", _T),
        ("opencv-street-6", "text/scenetext06.jpg", "building", _E),
    )),
)

PHOTOS: Tuple[Photo, ...] = tuple(
    Photo(name, source, pattern.format(file), subject, split, rest[0] if rest else name)
    for source, pattern, rows in _TABLE for name, file, subject, split, *rest in rows)
SUBJECTS: Tuple[str, ...] = tuple(sorted({p.subject for p in PHOTOS}))


def photos(split: str = "all") -> List[Photo]:
    """The curated photos of ``split`` ("train", "evaluation" or "all"), subjects interleaved.

    The order takes one photo of each subject in turn (table order within a subject), so the
    first N photos of a split mix its subjects; it depends only on the table.
    """
    if split not in SPLITS + ("all",):
        raise ValueError(f"split must be one of {SPLITS + ('all',)}, got {split!r}")
    by_subject: Dict[str, List[Photo]] = {s: [] for s in SUBJECTS}
    for p in PHOTOS:
        if split in ("all", p.split):
            by_subject[p.subject].append(p)
    queues = [q for q in by_subject.values() if q]
    out: List[Photo] = []
    for k in range(max((len(q) for q in queues), default=0)):
        out.extend(q[k] for q in queues if k < len(q))
    return out


def get(name: str) -> Photo:
    """The photo called ``name``."""
    for p in PHOTOS:
        if p.name == name:
            return p
    raise KeyError(f"no photo {name!r} (python -m models.photos list)")


@functools.lru_cache(maxsize=None)
def _package_dir(module: str) -> Optional[Path]:
    # the folder of an importable package, found without importing it (fast, no side effects)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def locate(photo: Photo) -> Optional[Path]:
    """The photo's file, or None when its package is not installed."""
    if photo.source in PIP_PACKAGES:
        root = _package_dir(PIP_PACKAGES[photo.source])
        path = root / photo.path if root is not None else None
    else:
        path = Path(photo.path)
    return path if path is not None and path.is_file() else None


def available(split: str = "all") -> Tuple[List[Tuple[Photo, Path]], List[Photo]]:
    """``(installed, missing)``: the installed photos of ``split`` with their files, and the rest."""
    installed, missing = [], []
    for p in photos(split):
        path = locate(p)
        if path is None:
            missing.append(p)
        else:
            installed.append((p, path))
    return installed, missing


def install_commands(missing: Iterable[Photo]) -> List[str]:
    """The apt-get and pip commands that install the packages of ``missing`` photos."""
    sources = {p.source for p in missing}
    apt = [s for s in APT_PACKAGES if s in sources]
    pip = [s for s in PIP_PACKAGES if s in sources]
    commands = []
    if apt:
        commands.append("apt-get install --no-install-recommends " + " ".join(apt))
    if pip:
        commands.append("pip install " + " ".join(pip))
    return commands


def _dpkg_installed(package: str) -> bool:
    return Path(f"/var/lib/dpkg/info/{package}.list").is_file()


def missing_message(missing: Sequence[Photo]) -> str:
    """One paragraph: how many photos are missing, from which packages, and how to install them."""
    if not missing:
        return ""
    counts: Dict[str, int] = {}
    for p in missing:
        counts[p.source] = counts.get(p.source, 0) + 1
    parts = ", ".join(f"{s} ({n})" for s, n in sorted(counts.items()))
    lines = [f"skipped {len(missing)} photo(s) not installed: {parts}"]
    lines += [f"  install them: {c}" for c in install_commands(missing)]
    # a docker image's dpkg path-exclude drops /usr/share/doc, where opencv-doc keeps its photos
    excluded = sorted(s for s in counts if s in APT_PACKAGES and _dpkg_installed(s))
    if excluded:
        lines.append(f"  {', '.join(excluded)} installed but files missing: a dpkg path-exclude "
                     "(/etc/dpkg/dpkg.cfg.d) may drop them; remove it and reinstall")
    return "\n".join(lines)


def load(photo, short_side: int = SHORT_SIDE) -> np.ndarray:
    """The photo as uint8 ``[h, w, 3]``, downscaled so its shorter side is at most ``short_side``.

    ``photo``: a Photo, a name, or a path. Grayscale photos are replicated to 3 channels; a
    transparent background is composited onto white; EXIF orientation is applied. JPEGs are
    decoded at a reduced scale (Pillow's draft mode), so a 6000-pixel photo never sits in memory
    at full size.
    """
    try:
        from PIL import Image, ImageOps
    except ImportError:
        from sparsekit.errors import SparsekitError

        raise SparsekitError("loading photos needs Pillow: pip install pillow") from None
    if isinstance(photo, (str, Path)) and not Path(photo).is_file():
        photo = get(str(photo))
    if isinstance(photo, Photo):
        path = locate(photo)
        if path is None:
            raise FileNotFoundError(f"photo {photo.name} is not installed: {photo.install}")
    else:
        path = Path(photo)
    with Image.open(path) as im:
        w, h = im.size
        scale = min(1.0, short_side / min(w, h))
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
        if scale < 1.0:
            im.draft("RGB", target)  # JPEG only: decode at 1/2, 1/4 or 1/8 size, still >= target
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # the EXIF orientation turns it a quarter
            target = target[::-1]
        image = ImageOps.exif_transpose(im)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image.alpha_composite(rgba)
        image = image.convert("RGB")
        if image.size != target:
            image = image.resize(target, Image.LANCZOS)
        return np.asarray(image, dtype=np.uint8).copy()


def export(split: str, folder, limit: Optional[int] = None, short_side: int = SHORT_SIDE,
           quality: int = QUALITY, quiet: bool = False) -> List[Path]:
    """Write the installed photos of ``split`` as ``{name}.jpg`` files into ``folder``.

    ``limit``: at most this many (the first installed photos in :func:`photos` order, a mix of
    subjects). Photos whose package is missing are skipped with a message on stderr naming the
    install command. Returns the written files, in order.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    installed, missing = available(split)
    if limit is not None:
        installed = installed[:limit]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for photo, path in installed:
        pixels = load(path, short_side)
        from PIL import Image  # load() checked that Pillow is there

        out = folder / f"{photo.name}.jpg"
        Image.fromarray(pixels).save(out, "JPEG", quality=quality)
        written.append(out)
    if missing and not quiet:
        print(missing_message(missing), file=sys.stderr)
    return written


def _table(split: str) -> str:
    rows = []
    for p in photos(split):
        rows.append(f"{p.name:28} {p.split:10} {p.subject:9} {p.source:27} "
                    f"{'ok' if locate(p) else 'missing'}")
    return "\n".join(rows)


def summary(split: str = "all") -> str:
    """Photo and scene counts per split and subject, installed of curated."""
    lines = []
    for s in (SPLITS if split == "all" else (split,)):
        chosen = [p for p in PHOTOS if p.split == s]
        have = [p for p in chosen if locate(p)]
        per = ", ".join(f"{sub} {sum(p.subject == sub for p in have)}/{sum(p.subject == sub for p in chosen)}"
                        for sub in SUBJECTS if any(p.subject == sub for p in chosen))
        scenes = len({p.group for p in chosen})
        lines.append(f"{s}: {len(have)}/{len(chosen)} photos installed ({scenes} scenes); {per}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.photos", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lst = sub.add_parser("list", help="every curated photo: split, subject, package, installed or not")
    lst.add_argument("--split", choices=SPLITS + ("all",), default="all")
    exp = sub.add_parser("export", help="write a split's installed photos as JPEG files into a folder")
    exp.add_argument("folder", type=Path)
    exp.add_argument("--split", choices=SPLITS + ("all",), default="train")
    exp.add_argument("--limit", type=int, help="at most N photos (a mix of subjects)")
    exp.add_argument("--short-side", type=int, default=SHORT_SIDE, help="downscale to this shorter side")
    exp.add_argument("--quality", type=int, default=QUALITY, help="JPEG quality")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(_table(args.split))
        print(summary(args.split))
        _, missing = available(args.split)
        if missing:
            print(missing_message(missing))
        return 0
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    if args.short_side < 8 or not 1 <= args.quality <= 100:
        parser.error("--short-side must be >= 8 and --quality in 1..100")
    written = export(args.split, args.folder, limit=args.limit, short_side=args.short_side,
                     quality=args.quality)
    print(f"wrote {len(written)} photo(s) ({args.split}) to {args.folder}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
