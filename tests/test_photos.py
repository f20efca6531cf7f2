"""models/photos.py: the curated photo list, its train/evaluation split, loading and export.

The photos come from optional packages (scikit-image, scikit-learn, matplotlib and six Debian
packages); what needs them runs on whatever is installed and skips when nothing is.
"""
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from sparsekit.models import natural_images, photos

ROOT = Path(__file__).resolve().parents[1]


def test_names_unique_and_usable_as_file_names():
    names = [p.name for p in photos.PHOTOS]
    assert len(names) == len(set(names))
    for name in names:
        assert name == name.lower() and all(c.isalnum() or c == "-" for c in name), name
    assert len({(p.source, p.path) for p in photos.PHOTOS}) == len(names), "one file listed twice"


def test_curated_list_size_and_splits():
    assert len(photos.PHOTOS) >= 40
    assert len(photos.photos("train")) == 65 and len(photos.photos("evaluation")) == 41
    assert {p.split for p in photos.PHOTOS} == set(photos.SPLITS)


def test_splits_never_share_a_photo_or_a_scene():
    train = photos.photos("train")
    evaluation = photos.photos("evaluation")
    assert not {p.name for p in train} & {p.name for p in evaluation}
    assert not {p.path for p in train} & {p.path for p in evaluation}
    # a stereo pair / frames of one scene is one group, and a group has one split
    splits = defaultdict(set)
    for p in photos.PHOTOS:
        splits[p.group].add(p.split)
    assert all(len(s) == 1 for s in splits.values()), {g: s for g, s in splits.items() if len(s) > 1}
    multi = {g for g in splits if sum(p.group == g for p in photos.PHOTOS) > 1}
    assert {"skimage-motorcycle", "opencv-aloe", "opencv-leuven", "opencv-aero"} <= multi


def test_order_is_deterministic_and_interleaves_subjects():
    for split in ("train", "evaluation", "all"):
        first, again = photos.photos(split), photos.photos(split)
        assert first == again
    assert sorted(p.name for p in photos.photos("all")) == sorted(p.name for p in photos.PHOTOS)
    assert photos.photos("train") + photos.photos("evaluation") != []
    assert set(photos.photos("train")) | set(photos.photos("evaluation")) == set(photos.PHOTOS)
    # the first photos of a split cover its subjects one each, so --limit keeps a mix
    train = photos.photos("train")
    subjects = {p.subject for p in train}
    assert len({p.subject for p in train[:len(subjects)]}) == len(subjects)
    with pytest.raises(ValueError):
        photos.photos("calibration")


def test_subjects_are_balanced_between_splits():
    scenes = defaultdict(lambda: defaultdict(set))
    for p in photos.PHOTOS:
        scenes[p.subject][p.split].add(p.group)
    for subject, by_split in scenes.items():
        n_train, n_eval = len(by_split["train"]), len(by_split["evaluation"])
        assert n_train >= 1 and n_eval >= 1, subject
        assert 0.25 <= n_eval / (n_train + n_eval) <= 0.5, (subject, n_train, n_eval)


def test_skimage_photos_keep_the_natural_images_split():
    # natural_images' calibration photos train here, its evaluation photos evaluate
    files = {"immunohistochemistry": ["ihc"], "clock": ["clock_motion"],
             "motorcycle": ["motorcycle_left", "motorcycle_right"]}
    skimage = {Path(p.path).stem: p for p in photos.PHOTOS if p.source == "scikit-image"}
    expected = {}
    for split, names in natural_images.SPLITS.items():
        for name in names:
            for stem in files.get(name, [name]):
                expected[stem] = "train" if split == "calibration" else "evaluation"
    assert {stem: p.split for stem, p in skimage.items()} == expected


def test_sources_and_install_commands():
    used = {p.source for p in photos.PHOTOS}
    assert used == set(photos.APT_PACKAGES) | set(photos.PIP_PACKAGES)
    for p in photos.PHOTOS:
        if p.source in photos.APT_PACKAGES:
            assert p.path.startswith("/usr/share/"), p
            assert p.install == f"apt-get install --no-install-recommends {p.source}"
        else:
            assert not p.path.startswith("/"), p
            assert p.install == f"pip install {p.source}"
    assert photos.APT_INSTALL.split()[-len(photos.APT_PACKAGES):] == list(photos.APT_PACKAGES)
    some = [photos.get("mate-aqua"), photos.get("opencv-baboon"), photos.get("sklearn-china")]
    assert photos.install_commands(some) == [
        "apt-get install --no-install-recommends mate-backgrounds opencv-doc", "pip install scikit-learn"]
    with pytest.raises(KeyError):
        photos.get("no-such-photo")


def test_imports_without_the_optional_packages():
    # the photo packages, Pillow and the sample-data libraries all blocked: the list still works
    code = ("import sys\n"
            "for m in ('PIL', 'skimage', 'sklearn', 'matplotlib'): sys.modules[m] = None\n"
            "from models import photos\n"
            "installed, missing = photos.available('all')\n"
            "assert not any(p.source in photos.PIP_PACKAGES for p, _ in installed)\n"
            "print(len(photos.PHOTOS), len(photos.photos('train')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(photos.PHOTOS)), str(len(photos.photos("train")))]


def test_nothing_installed_skips_with_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(photos, "locate", lambda photo: None)
    monkeypatch.setattr(photos, "_dpkg_installed", lambda package: False)
    assert photos.export("train", tmp_path / "out") == []
    assert list((tmp_path / "out").iterdir()) == []
    err = capsys.readouterr().err
    assert f"skipped {len(photos.photos('train'))} photo(s) not installed" in err
    train_apt = [s for s in photos.APT_PACKAGES if any(p.source == s for p in photos.photos("train"))]
    assert "apt-get install --no-install-recommends " + " ".join(train_apt) in err
    assert "pip install " in err
    assert photos.main(["export", str(tmp_path / "cli"), "--split", "evaluation"]) == 1
    assert photos.main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(p.name in out for p in photos.PHOTOS) and "missing" in out
    # a package that dpkg lists but whose files are gone (a path-exclude) is named as such
    monkeypatch.setattr(photos, "_dpkg_installed", lambda package: package == "opencv-doc")
    assert "opencv-doc installed but files missing" in photos.missing_message([photos.get("opencv-lake")])


def test_load_downscales_flattens_alpha_and_applies_exif(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    # a transparent PNG: composited onto white, 3 channels, shorter side 512
    rgba = np.zeros((600, 900, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :450, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    pixels = photos.load(tmp_path / "alpha.png")
    assert pixels.dtype == np.uint8 and pixels.shape == (512, 768, 3)
    assert tuple(pixels[256, 100]) == (200, 0, 0) and tuple(pixels[256, 700]) == (255, 255, 255)
    # a JPEG stored 1200x800 with EXIF orientation 6 (shown turned a quarter clockwise, 800x1200):
    # the stored top-left red corner is shown top-right
    stored = np.full((800, 1200, 3), 40, np.uint8)
    stored[:200, :200] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "turned.jpg", quality=95, exif=exif.tobytes())
    pixels = photos.load(tmp_path / "turned.jpg")
    assert pixels.shape == (768, 512, 3)
    assert pixels[20, -20, 0] > 200 and pixels[20, -20, 1] < 60 and pixels[-20, 20, 0] < 80
    # small grayscale photos are replicated to 3 channels and kept at their size
    Image.fromarray(np.arange(200 * 300, dtype=np.uint32).reshape(200, 300).astype(np.uint8)).save(
        tmp_path / "gray.png")
    pixels = photos.load(tmp_path / "gray.png")
    assert pixels.shape == (200, 300, 3) and (pixels[..., 0] == pixels[..., 2]).all()


def _installed_one_per_source():
    seen, chosen = set(), []
    for photo, path in photos.available("all")[0]:
        if photo.source not in seen:
            seen.add(photo.source)
            chosen.append((photo, path))
    return chosen


def test_installed_photos_load_small():
    pytest.importorskip("PIL")
    chosen = _installed_one_per_source()
    if not chosen:
        pytest.skip("no photo package installed: " + photos.APT_INSTALL)
    for photo, _ in chosen:
        pixels = photos.load(photo)
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, photo.name
        assert min(pixels.shape[:2]) <= photos.SHORT_SIDE and min(pixels.shape[:2]) >= 128, photo.name
        assert pixels.std() > 5, photo.name   # a real picture, not a blank file
        assert np.array_equal(photos.load(photo.name), pixels)   # by name, same pixels


def test_export_writes_readable_jpegs(tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    installed, _ = photos.available("evaluation")
    if not installed:
        pytest.skip("no evaluation photo installed: " + photos.APT_INSTALL)
    written = photos.export("evaluation", tmp_path, limit=4, quiet=True)
    assert [f.name for f in written] == [f"{p.name}.jpg" for p, _ in installed[:4]]
    for f in written:
        with Image.open(f) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert min(im.size) <= photos.SHORT_SIDE
    # the CLI: --limit, and the files land where a folder-of-images CLI reads them
    rc = photos.main(["export", str(tmp_path / "cli"), "--split", "train", "--limit", "2",
                      "--short-side", "128"])
    files = sorted((tmp_path / "cli").glob("*.jpg"))
    assert len(files) == min(2, len(photos.available("train")[0]))
    assert rc == (0 if files else 1)   # nothing written is a failure
    for f in files:
        with Image.open(f) as im:
            assert min(im.size) <= 128
    assert "wrote" in capsys.readouterr().out
