"""Channel correction (prune --calibration --channel-correction): each reconstructed output channel's
weight row and bias are set so its output mean and spread match the dense model's."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from sparsekit.calibration import Calibration
from sparsekit.cli import main
from sparsekit.errors import SparsekitError
from sparsekit.prune import prune
from sparsekit.reconstruct import CHANNEL_SCALE_RANGE, LayerStats, reconstruct

EFFS = {"bank": {"pattern": "bank", "bank_size": 16, "block": None},
        "bank1x4": {"pattern": "bank", "bank_size": 16, "block": [1, 4]},
        "block": {"pattern": "block", "bank_size": None, "block": [1, 4]},
        "unstructured": {"pattern": "unstructured", "bank_size": None, "block": None}}


def _stats(Xp, Xd):
    n = len(Xp)
    return LayerStats(Xp.T @ Xp / n, Xp.mean(0), n, Xp.T @ Xd / n, Xd.mean(0), Xd.T @ Xd / n)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(EFFS)), s=st.floats(0.0, 0.95), M=st.integers(4, 24),
       K=st.integers(4, 90), seed=st.integers(0, 2 ** 16))
def test_the_zero_pattern_is_the_same_with_and_without(kind, s, M, K, seed):
    rng = np.random.default_rng(seed)
    Xd = rng.standard_normal((4 * K + 8, K)) @ (np.eye(K) + rng.standard_normal((K, K)) / np.sqrt(K))
    Xd[:, rng.random(K) < 0.1] = 0.0                  # dead inputs
    Xp = Xd + 0.3 * rng.standard_normal(Xd.shape)     # what upstream pruning left
    W = rng.standard_normal((M, K)).astype(np.float32)
    plain, mask, _ = reconstruct(W, _stats(Xp, Xd), EFFS[kind], s)
    corrected, mask_cc, info = reconstruct(W, _stats(Xp, Xd), EFFS[kind], s, channel_correction=True)
    assert np.array_equal(mask, mask_cc)
    assert np.array_equal(plain == 0, corrected == 0)
    lo, hi = CHANNEL_SCALE_RANGE
    assert np.all((info["scale"] >= lo) & (info["scale"] <= hi))
    np.testing.assert_allclose(corrected, plain * info["scale"][:, None].astype(np.float32), rtol=1e-6)


def _two_convs():
    """x -> conv1 -> Relu -> conv2 (outputs c2) -> Relu -> conv3 (outputs c3); conv1 has 3 inputs,
    so prune leaves it dense; conv2 has no bias (channel correction creates one)."""
    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan)).astype(np.float32), name)
             for name, shape, fan in (("w1", (16, 3, 3, 3), 27), ("w2", (32, 16, 3, 3), 144),
                                      ("w3", (24, 32, 1, 1), 32), ("b3", (24,), 1))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3")]
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("c2", "c3")]
    g = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 12, 12])],
                          out, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _outputs(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(("c2", "c3"), sess.run(["c2", "c3"], {"x": x})))


def _channel_moments(y):
    per_channel = np.moveaxis(y, 1, 0).reshape(y.shape[1], -1).astype(np.float64)
    return per_channel.mean(axis=1), per_channel.std(axis=1)


@pytest.fixture(scope="module")
def convs():
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((96, 3, 12, 12)) + 0.5).astype(np.float32)
    model = _two_convs()
    cal = Calibration({"x": x}, 32, "rand")
    runs = {cc: prune(model, "block", 0.5, calibration=cal, min_params=0, channel_correction=cc)
            for cc in (False, True)}
    return model, x, runs


def test_corrected_channels_have_the_dense_mean_and_spread(convs):
    # numpy reference from onnxruntime runs of the dense and the pruned model on the calibration data
    model, x, runs = convs
    pruned, report = runs[True]
    assert [r.name for r in report.layers] == ["conv2", "conv3"] and report.settings["channel_correction"]
    lo, hi = CHANNEL_SCALE_RANGE
    assert all(lo < r.channel_scale[0] <= r.channel_scale[1] < hi for r in report.layers), \
        [r.channel_scale for r in report.layers]
    dense, got, plain = _outputs(model, x), _outputs(pruned, x), _outputs(runs[False][0], x)
    for name in ("c2", "c3"):
        mean_d, std_d = _channel_moments(dense[name])
        mean_p, std_p = _channel_moments(got[name])
        np.testing.assert_allclose(std_p, std_d, rtol=1e-4)
        np.testing.assert_allclose(mean_p, mean_d, atol=1e-4 * std_d.mean())
        # without the correction the spread is visibly off (the test can tell the two apart)
        assert np.max(np.abs(_channel_moments(plain[name])[1] / std_d - 1)) > 0.02


def test_correction_hardly_increases_the_layer_error(convs):
    # matching the spread gives up a little of least squares' error (~e²/4 for an exact least-squares
    # fit with relative error e); the first pruned layer sees the same inputs in both runs
    model, x, runs = convs
    dense = _outputs(model, x)["c2"]
    def rel_error(m):
        return float(np.sum((_outputs(m, x)["c2"] - dense) ** 2) / np.sum(dense ** 2))
    plain, corrected = rel_error(runs[False][0]), rel_error(runs[True][0])
    assert corrected <= 1.1 * plain + 0.01, (plain, corrected)
    # and per layer as the report gives it (bias aside, upstream corrected or not)
    for with_cc, without in zip(runs[True][1].layers, runs[False][1].layers):
        assert with_cc.error <= 1.25 * without.error + 0.02, (with_cc.name, with_cc.error, without.error)


@pytest.mark.parametrize("kind", ["bank", "block", "unstructured"])
def test_pruned_model_has_the_same_zeros_with_and_without(kind):
    # one pruned layer (same inputs in both runs): the written zero pattern is bit-identical
    rng = np.random.default_rng(13)
    W = rng.standard_normal((64, 32)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["y"], name="fc")], "fc",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
                          [numpy_helper.from_array(W, "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = (rng.standard_normal((512, 64)) @ rng.standard_normal((64, 64)) / 8).astype(np.float32)
    cal = Calibration({"x": x}, 64, "rand")
    weights = []
    for cc in (False, True):
        pruned, report = prune(model, kind, 0.8, bank_size=16 if kind == "bank" else None,
                               calibration=cal, min_params=0, channel_correction=cc)
        assert (report.layers[0].channel_scale is not None) == cc
        weights.append(next(numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name == "W"))
    assert np.array_equal(weights[0] == 0, weights[1] == 0)
    assert not np.array_equal(weights[0], weights[1])


def test_no_correction_where_the_shift_has_no_bias():
    rng = np.random.default_rng(14)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 48])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
                          [numpy_helper.from_array(rng.standard_normal((48, 32)).astype(np.float32), "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    cal = Calibration({"x": rng.standard_normal((256, 48)).astype(np.float32)}, 64, "rand")
    _, report = prune(model, "unstructured", 0.7, calibration=cal, min_params=0, channel_correction=True)
    assert report.layers[0].channel_scale is None
    assert "no channel correction" in report.layers[0].note


def test_default_is_on_with_match_layer_only():
    x = np.random.default_rng(16).standard_normal((32, 3, 12, 12)).astype(np.float32)
    cal = Calibration({"x": x}, 32, "rand")
    for match, expected in (("dense", False), ("layer", True)):
        _, report = prune(_two_convs(), "block", 0.5, calibration=cal, min_params=0, match=match)
        assert report.settings["channel_correction"] is expected
        assert all((r.channel_scale is not None) == expected for r in report.layers)


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    model = _two_convs()
    with pytest.raises(SparsekitError, match="channel_correction needs calibration"):
        prune(model, "block", 0.5, min_params=0, channel_correction=True)
    with pytest.raises(SparsekitError, match="channel_correction must be True or False"):
        prune(model, "block", 0.5, min_params=0, channel_correction="yes")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    out = tmp_path / "out.onnx"
    code = main(["prune", str(path), "-o", str(out), "--min-params", "0", "--channel-correction"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "channel_correction needs calibration" in lines[0]
    assert not out.exists()


def test_cli_reports_the_scales(tmp_path, capsys):
    path, calib, out = tmp_path / "m.onnx", tmp_path / "cal.npz", tmp_path / "out.onnx"
    onnx.save(_two_convs(), path)
    np.savez(calib, x=np.random.default_rng(15).standard_normal((32, 3, 12, 12)).astype(np.float32))
    code = main(["prune", str(path), "-o", str(out), "--min-params", "0", "--calibration", str(calib),
                 "--channel-correction", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["settings"]["channel_correction"] is True
    assert all(len(r["channel_scale"]) == 2 for r in report["layers"])
    code = main(["prune", str(path), "-o", str(out), "--min-params", "0", "--calibration", str(calib),
                 "--channel-correction", "--force"])
    assert code == 0 and "scale" in capsys.readouterr().out      # the table's column
