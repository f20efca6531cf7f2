"""Images synthesised from the teacher (sparsekit.inversion, finetune --invert): checked with
stock onnxruntime, which computes the statistics and classes of the images independently."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from sparsekit.cli import main  # noqa: E402
from sparsekit.errors import SparsekitError  # noqa: E402
from sparsekit.finetune import finetune  # noqa: E402
from sparsekit.inversion import invert_images, statistic_targets  # noqa: E402
from test_finetune import _cnn, _data, _photo_folder, _pruned  # noqa: E402

_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def _bn_cnn(seed=0, size=16, classes=6):
    """conv3x3 -> BN -> relu -> conv1x1 -> BN -> relu -> GAP -> Gemm, with BN running statistics
    far from what random images give (means of +-1.5, variances 0.2-3)."""
    rng = np.random.default_rng(seed)
    c1, c2 = 8, 12
    inits = [numpy_helper.from_array(rng.standard_normal((c1, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal((c2, c1, 1, 1)).astype(np.float32) * 0.3, "w2"),
             numpy_helper.from_array(rng.standard_normal((classes, c2)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["a1"], pads=[1, 1, 1, 1], name="conv1")]
    for k, (c, src, dst) in enumerate(((c1, "a1", "b1"), (c2, "a2", "b2")), 1):
        inits += [numpy_helper.from_array(np.ones(c, np.float32), f"g{k}"),
                  numpy_helper.from_array(np.zeros(c, np.float32), f"be{k}"),
                  numpy_helper.from_array(rng.uniform(-1.5, 1.5, c).astype(np.float32), f"m{k}"),
                  numpy_helper.from_array(rng.uniform(0.2, 3.0, c).astype(np.float32), f"v{k}")]
        nodes.append(helper.make_node("BatchNormalization", [src, f"g{k}", f"be{k}", f"m{k}", f"v{k}"],
                                      [f"n{k}"], name=f"bn{k}"))
        nodes.append(helper.make_node("Relu", [f"n{k}"], [dst]))
        if k == 1:
            nodes.append(helper.make_node("Conv", ["b1", "w2"], ["a2"], name="conv2"))
    nodes += [helper.make_node("GlobalAveragePool", ["b2"], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["f"]),
              helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1, name="fc")]
    g = helper.make_graph(nodes, "bn_cnn",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _stock_stats(model, images):
    """Per-channel mean and variance of each BN input, and the logits, by stock onnxruntime on
    uint8 photos (normalised as the module does)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in ("a1", "a2"):
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    x = ((np.stack(images).astype(np.float32) / 255 - _MEAN) / _STD).astype(np.float32)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, a1, a2 = sess.run(None, {"input": x})
    return [(a.mean(axis=(0, 2, 3)), a.var(axis=(0, 2, 3))) for a in (a1, a2)], logits


def _distance(stats, model):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return sum(np.linalg.norm(m - inits[f"m{k}"]) + np.linalg.norm(v - inits[f"v{k}"])
               for k, (m, v) in enumerate(stats, 1))


def test_inverted_images_match_the_batchnorm_statistics():
    model = _bn_cnn()
    photos, facts = invert_images(model, 12, (16, 16), steps=120, batch_size=12, seed=3)
    assert len(photos) == 12 and all(p.dtype == torch.uint8 and p.shape == (3, 16, 16) for p in photos)
    assert facts["statistics"] == "batchnorm" and facts["layers"] == 2 and facts["classes"] == 6
    assert facts["loss_last"] < facts["loss_first"]
    # the same kind of starting images, not optimised: smooth noise
    rng = np.random.default_rng(0)
    start = [torch.from_numpy(np.clip(np.kron(rng.random((3, 2, 2)), np.ones((1, 8, 8))) * 255, 0, 255)
                              .astype(np.uint8)) for _ in range(12)]
    after, logits = _stock_stats(model, photos)
    before, _ = _stock_stats(model, start)
    assert _distance(after, model) < 0.7 * _distance(before, model)
    # each image was made for a random class: stock onnxruntime's log-probability of that class
    # is well above the image's average over classes (the statistics pull against it on this
    # small random net, so it is not always the top class)
    targets = np.array(facts["targets"])
    assert len(set(targets.tolist())) >= 3
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert logp[np.arange(len(targets)), targets].mean() > logp.mean() + 0.5


def test_without_batchnorm_the_statistics_are_measured_on_real_images():
    from sparsekit.torch_graph import OnnxModule
    model = _cnn(size=16)
    real = {"input": torch.randn(8, 3, 16, 16)}
    inv = statistic_targets(model, OnnxModule(model), real)
    assert inv.source == "measured" and [t[0] for t in inv.targets] == ["c1", "c2"]
    x = real["input"].numpy()
    s = ort.InferenceSession(_with_output(model, "c1").SerializeToString(),
                             providers=["CPUExecutionProvider"])
    c1 = s.run(["c1"], {"input": x})[0]
    np.testing.assert_allclose(inv.targets[0][1].numpy(), c1.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(inv.targets[0][2].numpy(), c1.var(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    with pytest.raises(SparsekitError, match="needs BatchNormalization nodes"):
        statistic_targets(model)


def _with_output(model, name):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return m


def test_finetune_invert_adds_teacher_images_to_the_photos(tmp_path):
    dense = _bn_cnn(size=32)
    pm = _pruned(dense, 0.5, pattern="block")
    folder = _photo_folder(tmp_path)
    out, report = finetune(pm, dense, folder, preprocess="imagenet", steps=5, batch_size=8, lr=1e-3,
                           holdout=0.34, invert=10, invert_steps=5, invert_size=16)
    assert report.inversion["images"] == 10 and report.inversion["statistics"] == "batchnorm"
    assert report.train_count == 4 + 10          # 6 photos, 2 held back, 10 synthesised
    assert report.settings["invert"] == 10 and report.settings["invert_size"] == 16
    for name, before in ((t.name, numpy_helper.to_array(t)) for t in pm.graph.initializer):
        if name.startswith("w"):
            after = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == name))
            np.testing.assert_array_equal(after == 0, before == 0)


def test_invert_errors(tmp_path):
    cnn = _cnn(size=8)
    with pytest.raises(SparsekitError, match="--invert needs a folder of images"):
        finetune(_pruned(cnn, pattern="block"), cnn, _data(tmp_path), steps=1, invert=2)
    with pytest.raises(SparsekitError, match="invert must be >= 0"):
        finetune(_pruned(cnn, pattern="block"), cnn, _data(tmp_path), steps=1, invert=-1)


def test_cli_invert_json(tmp_path, capsys):
    dense = _bn_cnn(size=32)
    onnx.save(dense, tmp_path / "dense.onnx")
    onnx.save(_pruned(dense, 0.5, pattern="block"), tmp_path / "pruned.onnx")
    folder = _photo_folder(tmp_path)
    code = main(["finetune", str(tmp_path / "pruned.onnx"), "-o", str(tmp_path / "tuned.onnx"),
                 "--teacher", str(tmp_path / "dense.onnx"), "--data", str(folder), "--preprocess",
                 "imagenet", "--steps", "2", "--batch-size", "4", "--invert", "4", "--invert-steps",
                 "3", "--invert-size", "16", "--json"])
    assert code == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["inversion"]["images"] == 4 and rep["settings"]["invert_steps"] == 3
    assert (tmp_path / "tuned.onnx").exists()
