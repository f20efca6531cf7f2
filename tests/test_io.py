"""Model files: atomic writes, permissions, external data in and out."""
import os
import stat

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsekit.cli import main
from sparsekit.errors import SparsekitError
from sparsekit.io import load_model, save_model, uses_external_data


def _gemm_model():
    w = np.random.default_rng(0).standard_normal((256, 128)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 256])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model_path, x):
    s = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_save_is_atomic_and_has_normal_permissions(tmp_path):
    out = tmp_path / "m.onnx"
    save_model(_gemm_model(), out)
    mode = stat.S_IMODE(os.stat(out).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary left


def test_external_data_roundtrip(tmp_path):
    m = _gemm_model()
    out = tmp_path / "ext.onnx"
    save_model(m, out, external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]
    assert uses_external_data(out)
    assert os.path.getsize(out) < 10_000  # the weights live in the side file
    x = np.ones((2, 128), np.float32)
    np.testing.assert_allclose(_run(out, x), x @ numpy_helper.to_array(m.graph.initializer[0]).T,
                               rtol=1e-4, atol=1e-4)
    loaded = load_model(out)
    assert loaded.graph.initializer[0].raw_data  # loaded fully, data in memory


def test_prune_keeps_external_data_layout(tmp_path, capsys):
    src = tmp_path / "src.onnx"
    onnx.save(_gemm_model(), str(src), save_as_external_data=True, location="src.weights",
              size_threshold=0)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    out = tmp_path / "pruned.onnx"
    assert main(["prune", str(src), "-o", str(out), "--sparsity", "0.5", "--min-params", "0"]) == 0
    assert uses_external_data(out) and (tmp_path / "pruned.onnx.data").exists()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    w = numpy_helper.to_array(load_model(out).graph.initializer[0])
    assert np.mean(w == 0) == pytest.approx(0.5)


def test_missing_external_data_is_one_line_error(tmp_path):
    src = tmp_path / "src.onnx"
    onnx.save(_gemm_model(), str(src), save_as_external_data=True, location="w.bin",
              size_threshold=0)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(SparsekitError, match="external data"):
        load_model(src)
