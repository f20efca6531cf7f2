"""The CLI: results, JSON, and one-line errors (no traceback, no partial file) for bad input."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsekit.cli import main


def _small_cnn(path):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.standard_normal((64, 16, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((10, 64)).astype(np.float32), "fc_w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    return path


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def cnn(tmp_path):
    return _small_cnn(tmp_path / "cnn.onnx")


def test_prune_writes_runnable_model_and_json_report(cnn, tmp_path, capsys):
    out = tmp_path / "pruned.onnx"
    before = _digest(cnn)
    code, stdout, stderr = _run(["prune", cnn, "-o", out, "--sparsity", "0.75", "--min-params", "0",
                                 "--json"], capsys)
    assert code == 0, stderr
    report = json.loads(stdout)
    names = {row["name"] for row in report["layers"]}
    assert names == {"conv1", "fc"}  # conv0 has 3 input channels: the first conv is skipped
    assert _digest(cnn) == before
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned)
    w1 = next(numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name == "w1")
    assert np.mean(w1 == 0) == pytest.approx(0.75, abs=0.02)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})
    assert y.shape == (1, 10) and np.isfinite(y).all()


def test_prune_table_output(cnn, tmp_path, capsys):
    code, stdout, _ = _run(["prune", cnn, "-o", tmp_path / "p.onnx", "--min-params", "0"], capsys)
    assert code == 0
    assert "conv1" in stdout and "removed" in stdout


def _assert_one_line_error(code, stdout, stderr, needle):
    assert code != 0
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert needle in lines[0], lines[0]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("args,needle", [
    (["--sparsity", "1.0"], "sparsity"),
    (["--sparsity", "-0.1"], "sparsity"),
    (["--block", "1x"], "block"),
    (["--pattern", "bank", "--bank-size", "0"], "bank"),
    (["--pattern", "bank", "--banks", "100000"], "bank"),
    (["--pattern", "nonsense"], "pattern"),
])
def test_bad_options(cnn, tmp_path, capsys, args, needle):
    out = tmp_path / "out.onnx"
    code, stdout, stderr = _run(["prune", cnn, "-o", out, "--min-params", "0", *args], capsys)
    _assert_one_line_error(code, stdout, stderr, needle)
    assert not out.exists()


def test_bad_files(tmp_path, capsys, cnn):
    out = tmp_path / "out.onnx"
    code, o, e = _run(["prune", tmp_path / "missing.onnx", "-o", out], capsys)
    _assert_one_line_error(code, o, e, "no such file")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \xff\xfe" * 10)
    code, o, e = _run(["prune", junk, "-o", out], capsys)
    _assert_one_line_error(code, o, e, "not a valid ONNX model")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(open(cnn, "rb").read()[:300])
    code, o, e = _run(["prune", truncated, "-o", out], capsys)
    _assert_one_line_error(code, o, e, "not a valid ONNX model")
    assert not out.exists()


def test_output_rules(cnn, tmp_path, capsys):
    before = _digest(cnn)
    code, o, e = _run(["prune", cnn, "-o", cnn], capsys)
    _assert_one_line_error(code, o, e, "input")
    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"keep me")
    code, o, e = _run(["prune", cnn, "-o", existing, "--min-params", "0"], capsys)
    _assert_one_line_error(code, o, e, "--force")
    assert existing.read_bytes() == b"keep me"
    code, o, e = _run(["prune", cnn, "-o", existing, "--min-params", "0", "--force"], capsys)
    assert code == 0
    onnx.checker.check_model(onnx.load(str(existing)))
    code, o, e = _run(["prune", cnn, "-o", tmp_path / "nodir" / "x.onnx"], capsys)
    _assert_one_line_error(code, o, e, "does not exist")
    assert _digest(cnn) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_unwritable_directory(cnn, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, o, e = _run(["prune", cnn, "-o", ro / "x.onnx"], capsys)
    _assert_one_line_error(code, o, e, "not writable")


def test_write_failure_leaves_no_file(cnn, tmp_path, capsys, monkeypatch):
    # root passes os.access checks; a failing write must still be one line and leave nothing
    import sparsekit.io as skio

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(skio.onnx, "save_model", refuse)
    out = tmp_path / "x.onnx"
    code, o, e = _run(["prune", cnn, "-o", out, "--min-params", "0"], capsys)
    _assert_one_line_error(code, o, e, "could not write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx"]


def test_no_prunable_layer(tmp_path, capsys):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, o, e = _run(["prune", path, "-o", tmp_path / "out.onnx"], capsys)
    _assert_one_line_error(code, o, e, "no prunable layer")


def test_debug_shows_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sparsekit", "--debug", "prune",
                           str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, cwd=tmp_path)   # the installed package
    assert "SparsekitError" in proc.stderr
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_help_on_every_command(tmp_path):
    for cmd in ([], ["prune"], ["zoo"]):
        # cwd elsewhere: `python -m` would otherwise import the source tree, not the package
        proc = subprocess.run([sys.executable, "-m", "sparsekit", *cmd, "--help"],
                              capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0 and "Usage" in proc.stdout


def test_prune_warns_when_a_layer_keeps_fewer_weights_than_rows(cnn, tmp_path, capsys):
    code, stdout, stderr = _run(["prune", cnn, "-o", tmp_path / "p.onnx", "--min-params", "0",
                                 "--pattern", "unstructured", "--sparsity", "0.99999999"], capsys)
    assert code == 0, stderr
    warnings = [line for line in stdout.splitlines() if line.startswith("warning:")]
    assert warnings and all("fewer than one per row" in w for w in warnings)
    assert any(w.startswith("warning: conv1: keeps") for w in warnings)
    code, stdout, _ = _run(["prune", cnn, "-o", tmp_path / "p.onnx", "--min-params", "0", "--json",
                            "--pattern", "unstructured", "--sparsity", "0.99999999", "--force"],
                           capsys)
    rep = json.loads(stdout)
    assert any("fewer than one per row" in n for n in rep["notes"])


def test_convert_that_converts_nothing(cnn, tmp_path, capsys):
    """A dense model: one line on stderr, exit 3, nothing written; --allow-empty writes it."""
    out = tmp_path / "s.onnx"
    code, stdout, stderr = _run(["convert", cnn, "-o", out], capsys)
    lines = stderr.strip().splitlines()
    assert code == 3 and len(lines) == 1 and "nothing converted: 0 of 3 layer(s) sparse" in lines[0]
    assert not out.exists()
    code, stdout, stderr = _run(["convert", cnn, "-o", out, "--allow-empty"], capsys)
    assert code == 0 and out.exists()
    assert stderr.strip().startswith("warning: nothing converted")


def test_prune_permute_reports_the_layers_it_reordered(cnn, tmp_path, capsys):
    out = tmp_path / "perm.onnx"
    code, stdout, stderr = _run(["prune", cnn, "-o", out, "--sparsity", "0.5", "--min-params", "0",
                                 "--permute", "--json"], capsys)
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["settings"]["permute"] is True
    (row,) = report["permuted"]            # conv1 -> Relu -> pool -> Flatten -> fc: closed
    assert row["name"] == "conv1" and row["readers"] == ["fc"]
    assert row["kept_after"] > row["kept_before"]
    code, stdout, stderr = _run(["prune", cnn, "-o", tmp_path / "p2.onnx", "--sparsity", "0.5",
                                 "--min-params", "0", "--permute"], capsys)
    assert code == 0, stderr
    assert "rows permuted in 1 layer(s)" in stdout
