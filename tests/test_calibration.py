"""Calibration data: .npz and image folders, batching, and one-line errors for every mismatch."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsekit.calibration import imagenet_preprocess, load_calibration
from sparsekit.errors import SparsekitError

DATA = Path(__file__).parent / "data"


def _model(dims, name="input", extra=None):
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)]
    nodes = [helper.make_node("Identity", [name], ["y"])]
    if extra:
        inputs.append(helper.make_tensor_value_info(extra, TensorProto.FLOAT, dims))
        nodes = [helper.make_node("Add", [name, extra], ["y"])]
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.zeros(1, np.float32), "unused")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_npz_batches_follow_the_inputs_batch_dim(tmp_path):
    x = np.arange(8 * 3 * 4, dtype=np.float64).reshape(8, 3, 4)
    np.savez(tmp_path / "c.npz", input=x)
    cal = load_calibration(tmp_path / "c.npz", _model(["n", 3, 4]), batch_size=3, limit=6)
    assert cal.samples == 6 and cal.step == 3
    got = list(cal.batches())
    assert [b["input"].shape for b in got] == [(3, 3, 4)] * 2
    assert got[0]["input"].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in got]), x[:6])
    fixed = load_calibration(tmp_path / "c.npz", _model([1, 3, 4]))
    assert fixed.step == 1 and len(list(fixed.batches())) == 8
    assert fixed.subset(5).samples == 5


@pytest.mark.parametrize("arrays,dims,match", [
    ({"other": np.zeros((4, 3))}, ["n", 3], "no array for model input 'input'"),
    ({"input": np.zeros((4, 3)), "junk": np.zeros((4, 3))}, ["n", 3], "'junk' is not a model input"),
    ({"input": np.zeros((4, 5))}, ["n", 3], "axis 1 differs"),
    ({"input": np.zeros((4,))}, ["n", 3], "rank 2"),
    ({"input": np.zeros((3, 3))}, [2, 3], "multiple of 2"),
    ({"input": np.array([["a", "b"]])}, ["n", 2], "dtype"),
])
def test_npz_mismatches_are_clear_errors(tmp_path, arrays, dims, match):
    np.savez(tmp_path / "c.npz", **arrays)
    with pytest.raises(SparsekitError, match=match):
        load_calibration(tmp_path / "c.npz", _model(dims))


def test_unequal_sample_counts_and_bad_files(tmp_path):
    np.savez(tmp_path / "c.npz", a=np.zeros((4, 3)), b=np.zeros((5, 3)))
    with pytest.raises(SparsekitError, match="different sample counts"):
        load_calibration(tmp_path / "c.npz", _model(["n", 3], "a", "b"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(SparsekitError, match="not a readable .npz"):
        load_calibration(tmp_path / "bad.npz", _model(["n", 3]))
    with pytest.raises(SparsekitError, match="no such calibration"):
        load_calibration(tmp_path / "missing.npz", _model(["n", 3]))
    with pytest.raises(SparsekitError, match="--preprocess applies to a folder"):
        load_calibration(tmp_path / "bad.npz", _model(["n", 3]), preprocess="imagenet")


def test_image_folder_with_imagenet_preprocessing(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for i, size in enumerate([(300, 260), (256, 400), (500, 280)]):
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    model = _model(["n", 3, 224, 224])
    with pytest.raises(SparsekitError, match="needs --preprocess"):
        load_calibration(tmp_path, model)
    cal = load_calibration(tmp_path, model, preprocess="imagenet", batch_size=1)
    x = cal.inputs["input"]
    assert x.shape == (3, 3, 224, 224) and x.dtype == np.float32
    # independent reference for one image: resize the short side to 256, centre crop, normalise
    im = Image.open(tmp_path / "0.png").convert("RGB")      # 260 wide x 300 high
    im = im.resize((256, round(300 * 256 / 260)), Image.BILINEAR)
    top = (im.size[1] - 224) // 2
    ref = np.asarray(im.crop((16, top, 240, top + 224)), np.float32) / 255.0
    ref = (ref - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x[0], ref.transpose(2, 0, 1), atol=1e-5)
    with pytest.raises(SparsekitError, match="exactly one input"):
        load_calibration(tmp_path, _model(["n", 3, 224, 224], "a", "b"), preprocess="imagenet")
    with pytest.raises(SparsekitError, match=r"\[N, 3, H, W\]"):
        load_calibration(tmp_path, _model(["n", 1, 8, 8]), preprocess="imagenet")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SparsekitError, match="no images"):
        load_calibration(empty, model, preprocess="imagenet")
    (empty / "broken.jpg").write_bytes(b"nope")
    with pytest.raises(SparsekitError, match="not a readable image"):
        load_calibration(empty, model, preprocess="imagenet")
    assert imagenet_preprocess(Image.open(tmp_path / "1.png"), 112, 112).shape == (3, 112, 112)


def test_digits_fixture_is_a_calibration_file():
    from sparsekit.models import digits
    model = onnx.load(DATA / "digits_cnn.onnx")
    d = digits.load_data(DATA / "digits.npz")
    assert d["train_x"].shape == (1197, 1, 8, 8) and d["test_x"].shape == (600, 1, 8, 8)
    assert 0.98 <= digits.accuracy(model, data=d) <= 1.0
