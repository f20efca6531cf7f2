"""External data (issue 19): weights in one or several side files, in a subfolder too, prune and
convert through the CLI and the Python API; outputs get their own side file, never one an input
uses (the clash case), with the .onnx's file mode, written atomically."""
import hashlib
import os
import stat

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsekit
import sparsekit.io as skio
from sparsekit.cli import main
from sparsekit.errors import SparsekitError

X = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)


def _weights():
    rng = np.random.default_rng(0)
    return {"w1": rng.standard_normal((64, 128)).astype(np.float32),    # MatMul [K, N]
            "w2": rng.standard_normal((128, 128)).astype(np.float32),
            "w3": rng.standard_normal((32, 128)).astype(np.float32),    # Gemm, transB
            "b3": rng.standard_normal(32).astype(np.float32)}


def _mlp(batch=2):
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="fc2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["y"], name="fc3", transB=1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 32])],
        [numpy_helper.from_array(a, n) for n, a in _weights().items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _save_external(model, path, locations):
    """Save `model` with each named initializer's bytes at `locations[name]` (relative to the
    model's folder; several tensors may share a file); the others stay inline."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    offsets = {}
    for t in m.graph.initializer:
        if t.name not in locations:
            continue
        f = path.parent / locations[t.name]
        f.parent.mkdir(parents=True, exist_ok=True)
        offset = offsets.get(f, 0)
        with open(f, "ab") as fh:
            fh.write(t.raw_data)
        offsets[f] = offset + len(t.raw_data)
        n = len(t.raw_data)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", locations[t.name]), ("offset", str(offset)), ("length", str(n))):
            t.external_data.add(key=k, value=v)
    onnx.save_model(m, str(path))
    return path


LAYOUTS = {
    "one": {n: "model.weights" for n in ("w1", "w2", "w3", "b3")},
    "several": {"w1": "weights/a.bin", "w2": "weights/a.bin", "w3": "w3.bin", "b3": "weights/b/b3.bin"},
}


def _files(d):
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _run(args, capsys):
    code = main([str(a) for a in args])
    c = capsys.readouterr()
    return code, c.out, c.err


def _one_line_error(code, out, err, needle):
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in err


def _stock(path_or_model):
    src = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) \
        else str(path_or_model)
    s = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": X})[0]


def _weight(path, name):
    m = onnx.load(str(path))
    return numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == name))


def _side_files(path):
    m = onnx.load(str(path), load_external_data=False)
    return sorted({e.value for t in m.graph.initializer for e in t.external_data
                   if e.key == "location"})


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


PRUNE = ["--sparsity", "0.9", "--min-params", "0"]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_cli_prune_convert_match_stock_onnxruntime(layout, tmp_path, capsys):
    src = _save_external(_mlp(), tmp_path / "model.onnx", LAYOUTS[layout])
    np.testing.assert_allclose(_stock(src), _stock(_mlp()), rtol=1e-5, atol=1e-5)
    inputs = _files(tmp_path)
    pruned, sparse = tmp_path / "pruned.onnx", tmp_path / "sparse.onnx"
    code, _, err = _run(["prune", src, "-o", pruned, *PRUNE], capsys)
    assert code == 0, err
    assert _side_files(pruned) == ["pruned.onnx.data"]     # like the input: external data
    assert np.mean(_weight(pruned, "w2") == 0) == pytest.approx(0.9, abs=0.01)
    code, _, err = _run(["convert", pruned, "-o", sparse], capsys)
    assert code == 0, err
    assert _side_files(sparse) == ["sparse.onnx.data"]
    assert any(n.domain == "ai.sparsekit" for n in onnx.load(str(sparse)).graph.node)
    y = sparsekit.session(str(sparse)).run(None, {"x": X})[0]
    np.testing.assert_allclose(y, _stock(pruned), rtol=1e-4, atol=1e-4)
    now = _files(tmp_path)
    assert {k: now[k] for k in inputs} == inputs          # every input file byte-identical
    assert set(now) - set(inputs) == {"pruned.onnx", "pruned.onnx.data", "sparse.onnx",
                                      "sparse.onnx.data"}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_python_api_reads_side_files(layout, tmp_path):
    src = _save_external(_mlp(), tmp_path / "model.onnx", LAYOUTS[layout])
    inputs = _files(tmp_path)
    pruned, _ = sparsekit.prune(str(src), sparsity=0.9, min_params=0)
    sparse, _ = sparsekit.convert(pruned)
    y = sparsekit.session(sparse).run(None, {"x": X})[0]
    np.testing.assert_allclose(y, _stock(pruned), rtol=1e-4, atol=1e-4)
    assert _files(tmp_path) == inputs


def test_missing_side_file_is_named(tmp_path, capsys):
    src = _save_external(_mlp(), tmp_path / "model.onnx", LAYOUTS["several"])
    os.unlink(tmp_path / "weights" / "b" / "b3.bin")
    code, out, err = _run(["prune", src, "-o", tmp_path / "p.onnx"], capsys)
    _one_line_error(code, out, err, "b3.bin")
    assert "not found" in err and not (tmp_path / "p.onnx").exists()


def test_clash_input_side_file_named_like_output(tmp_path, capsys):
    """model.onnx keeps its weights in pruned.onnx.data: pruning to pruned.onnx must not touch it."""
    src = _save_external(_mlp(), tmp_path / "model.onnx", {n: "pruned.onnx.data" for n in _weights()})
    inputs = _files(tmp_path)
    out = tmp_path / "pruned.onnx"
    code, _, err = _run(["prune", src, "-o", out, *PRUNE], capsys)
    assert code == 0, err
    assert {k: _files(tmp_path)[k] for k in inputs} == inputs
    assert _side_files(out) == ["pruned.onnx.1.data"]     # a fresh name, not the input's file
    assert np.mean(_weight(out, "w2") == 0) == pytest.approx(0.9, abs=0.01)
    np.testing.assert_array_equal(_weight(src, "w2"), _weights()["w2"])   # input still dense
    np.testing.assert_allclose(_stock(src), _stock(_mlp()), rtol=1e-5, atol=1e-5)
    # again with --force: the output's own side file is reused, the input still untouched
    code, _, err = _run(["prune", src, "-o", out, "--sparsity", "0.5", "--min-params", "0", "--force"],
                        capsys)
    assert code == 0, err
    assert _side_files(out) == ["pruned.onnx.1.data"]
    assert np.mean(_weight(out, "w2") == 0) == pytest.approx(0.5, abs=0.01)
    now = _files(tmp_path)
    assert {k: now[k] for k in inputs} == inputs
    assert set(now) == set(inputs) | {"pruned.onnx", "pruned.onnx.1.data"}


def test_clash_on_convert_and_output_over_an_input_side_file(tmp_path, capsys):
    src = _save_external(_mlp(), tmp_path / "model.onnx", {n: "w.bin" for n in _weights()})
    pruned = tmp_path / "pruned.onnx"
    assert _run(["prune", src, "-o", pruned, *PRUNE], capsys)[0] == 0
    os.rename(tmp_path / "pruned.onnx.data", tmp_path / "sparse.onnx.data")
    m = onnx.load(str(pruned), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "sparse.onnx.data"
    onnx.save_model(m, str(pruned))
    inputs = _files(tmp_path)
    code, _, err = _run(["convert", pruned, "-o", tmp_path / "sparse.onnx"], capsys)
    assert code == 0, err
    assert _side_files(tmp_path / "sparse.onnx") == ["sparse.onnx.1.data"]
    assert {k: _files(tmp_path)[k] for k in inputs} == inputs
    y = sparsekit.session(str(tmp_path / "sparse.onnx")).run(None, {"x": X})[0]
    np.testing.assert_allclose(y, _stock(pruned), rtol=1e-4, atol=1e-4)
    # -o naming a side file of the input, even with --force: refused before any work
    code, out, err = _run(["convert", pruned, "-o", tmp_path / "sparse.onnx.data", "--force"], capsys)
    _one_line_error(code, out, err, "side file of the input")
    assert {k: _files(tmp_path)[k] for k in inputs} == inputs


def test_side_file_of_any_model_read_is_protected(tmp_path):
    """The teacher's (any model read in this process) side files are protected as well."""
    teacher = _save_external(_mlp(), tmp_path / "teacher.onnx", {n: "out.onnx.data" for n in _weights()})
    before = _files(tmp_path)
    skio.load_model(teacher)
    out = skio.save_model(_mlp(), tmp_path / "out.onnx", external_data=True)
    assert _side_files(out) == ["out.onnx.1.data"]
    assert {k: _files(tmp_path)[k] for k in before} == before
    with pytest.raises(SparsekitError, match="read in this command"):
        skio.save_model(_mlp(), tmp_path / "out.onnx.data")


def test_side_file_has_the_onnx_file_mode(tmp_path, capsys):
    src = _save_external(_mlp(), tmp_path / "model.onnx", LAYOUTS["one"])
    old = os.umask(0o027)
    try:
        assert _run(["prune", src, "-o", tmp_path / "p.onnx", *PRUNE], capsys)[0] == 0
    finally:
        os.umask(old)
    assert _mode(tmp_path / "p.onnx") == _mode(tmp_path / "p.onnx.data") == 0o640


def test_force_replaces_both_and_leaves_no_stray_file(tmp_path, capsys):
    src = _save_external(_mlp(), tmp_path / "model.onnx", LAYOUTS["one"])
    out = tmp_path / "p.onnx"
    assert _run(["prune", src, "-o", out, *PRUNE], capsys)[0] == 0
    inputs = {k: v for k, v in _files(tmp_path).items() if not k.startswith("p.onnx")}
    assert _run(["prune", src, "-o", out, "--sparsity", "0.5", "--min-params", "0", "--force"],
                capsys)[0] == 0
    assert set(_files(tmp_path)) == set(inputs) | {"p.onnx", "p.onnx.data"}
    assert np.mean(_weight(out, "w2") == 0) == pytest.approx(0.5, abs=0.01)
    # now as one file: the old side file goes, once the new .onnx is in place
    assert _run(["prune", src, "-o", out, *PRUNE, "--force", "--no-external-data"], capsys)[0] == 0
    assert set(_files(tmp_path)) == set(inputs) | {"p.onnx"}
    assert _side_files(out) == [] and np.mean(_weight(out, "w2") == 0) == pytest.approx(0.9, abs=0.01)
    assert {k: _files(tmp_path)[k] for k in inputs} == inputs


def test_a_data_file_that_is_not_the_outputs_own_is_kept(tmp_path, capsys):
    src = _save_external(_mlp(), tmp_path / "model.onnx", LAYOUTS["one"])
    (tmp_path / "p.onnx").write_bytes(onnx.load(str(src)).SerializeToString())  # no side file
    (tmp_path / "p.onnx.data").write_bytes(b"someone else's")
    assert _run(["prune", src, "-o", tmp_path / "p.onnx", *PRUNE, "--force"], capsys)[0] == 0
    assert (tmp_path / "p.onnx.data").read_bytes() == b"someone else's"
    assert _side_files(tmp_path / "p.onnx") == ["p.onnx.1.data"]


@pytest.mark.parametrize("fail", ["replace_onnx", "save_model"])
@pytest.mark.parametrize("existing", [False, True])
def test_failure_during_write_leaves_old_output_intact(fail, existing, tmp_path, capsys, monkeypatch):
    src = _save_external(_mlp(), tmp_path / "model.onnx", LAYOUTS["several"])
    out = tmp_path / "p.onnx"
    if existing:
        assert _run(["prune", src, "-o", out, *PRUNE], capsys)[0] == 0
    before = _files(tmp_path)
    if fail == "replace_onnx":   # the side file is already in place when the .onnx move fails
        real = os.replace

        def replace(a, b, *args, **kw):
            if os.fspath(b) == os.fspath(out):
                raise OSError(28, "No space left on device")
            return real(a, b, *args, **kw)
        monkeypatch.setattr(skio.os, "replace", replace)
    else:
        def refuse(*a, **k):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(skio.onnx, "save_model", refuse)
    code, o, err = _run(["prune", src, "-o", out, "--sparsity", "0.5", "--min-params", "0",
                         "--force"], capsys)
    _one_line_error(code, o, err, "could not write")
    assert _files(tmp_path) == before        # nothing new, nothing lost, no temporary left
    if existing:
        np.testing.assert_allclose(_stock(out), _stock(tmp_path / "p.onnx"))
        assert np.mean(_weight(out, "w2") == 0) == pytest.approx(0.9, abs=0.01)


def test_no_external_data_refused_above_the_protobuf_limit(tmp_path, capsys, monkeypatch):
    src = tmp_path / "model.onnx"
    onnx.save_model(_mlp(), str(src))
    monkeypatch.setattr(skio, "_PROTOBUF_LIMIT", 10_000)    # "2 GB" without writing 2 GB
    code, out, err = _run(["prune", src, "-o", tmp_path / "p.onnx", *PRUNE, "--no-external-data"],
                          capsys)
    _one_line_error(code, out, err, "needs external data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    # the default: a side file because the model is too large
    assert _run(["prune", src, "-o", tmp_path / "p.onnx", *PRUNE], capsys)[0] == 0
    assert _side_files(tmp_path / "p.onnx") == ["p.onnx.data"]


def test_external_data_flag_forces_and_no_external_data_inlines(tmp_path, capsys):
    src = tmp_path / "model.onnx"
    onnx.save_model(_mlp(), str(src))
    code, _, err = _run(["prune", src, "-o", tmp_path / "p.onnx", *PRUNE, "--external-data"], capsys)
    assert code == 0, err
    assert _side_files(tmp_path / "p.onnx") == ["p.onnx.data"]
    assert os.path.getsize(tmp_path / "p.onnx") < 4096
    code, _, err = _run(["convert", tmp_path / "p.onnx", "-o", tmp_path / "s.onnx", "--no-external-data"],
                        capsys)
    assert code == 0, err
    assert _side_files(tmp_path / "s.onnx") == [] and not (tmp_path / "s.onnx.data").exists()
    y = sparsekit.session(str(tmp_path / "s.onnx")).run(None, {"x": X})[0]
    np.testing.assert_allclose(y, _stock(tmp_path / "p.onnx"), rtol=1e-4, atol=1e-4)


def test_flags_on_every_command_that_writes_a_model(capsys):
    for cmd in ("prune", "convert", "finetune"):
        code, out, _ = _run([cmd, "--help"], capsys)
        assert code == 0 and "--external-data" in out and "--no-external-data" in out


def test_lazy_model_saves_with_and_without_side_file(tmp_path):
    """Tensors a lazy load leaves on disk are copied into the output's own side file, or inlined."""
    src = _save_external(_mlp(), tmp_path / "model.onnx", LAYOUTS["several"])
    m = skio.load_model(src, lazy=True)
    a = skio.save_model(m, tmp_path / "a.onnx", external_data=True)
    b = skio.save_model(m, tmp_path / "b.onnx", external_data=False)
    assert _side_files(a) == ["a.onnx.data"] and _side_files(b) == []
    for p in (a, b):
        np.testing.assert_allclose(_stock(p), _stock(_mlp()), rtol=1e-5, atol=1e-5)
    assert skio.side_files(m, tmp_path)   # the model itself still points at its files


def test_finetune_never_writes_over_the_teachers_side_file(tmp_path, capsys):
    pytest.importorskip("torch")
    teacher = _save_external(_mlp("N"), tmp_path / "model.onnx", {n: "tuned.onnx.data" for n in _weights()})
    student = tmp_path / "pruned.onnx"
    assert _run(["prune", teacher, "-o", student, *PRUNE], capsys)[0] == 0
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(2).standard_normal((16, 64)).astype(np.float32))
    inputs = _files(tmp_path)
    out = tmp_path / "tuned.onnx"
    code, _, err = _run(["finetune", student, "-o", out, "--teacher", teacher, "--data", tmp_path / "d.npz",
                         "--steps", 2, "--batch-size", 4], capsys)
    assert code == 0, err
    assert _side_files(out) == ["tuned.onnx.1.data"]
    assert {k: _files(tmp_path)[k] for k in inputs} == inputs
    assert set(_files(tmp_path)) == set(inputs) | {"tuned.onnx", "tuned.onnx.1.data"}
    assert np.mean(_weight(out, "w2") == 0) == pytest.approx(0.9, abs=0.01)   # zeros held
