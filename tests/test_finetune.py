"""sparsekit.finetune / `sparsekit finetune`: distillation with the masks held.

Checked against independent references: the zero pattern and every non-weight byte of the model
compared with the input, model outputs from stock onnxruntime, convert's packed tensors."""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from sparsekit.cli import main  # noqa: E402
from sparsekit.convert import convert  # noqa: E402
from sparsekit.errors import SparsekitError, SparsekitInterrupted  # noqa: E402
from sparsekit.finetune import finetune  # noqa: E402
from sparsekit.prune import prune  # noqa: E402

PATTERNS = [dict(pattern="block"), dict(pattern="bank", bank_size=8), dict(pattern="unstructured"),
            dict(pattern="bank", bank_size=8, block="1x4")]


def _cnn(seed=0, c1=8, c2=16, classes=10, transposed_fc=False, size=8):
    """conv3x3 -> relu -> conv1x1 -> relu -> GAP -> flatten -> Gemm (transB or not)."""
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)  # noqa: E731
    fc = w(classes, c2)
    inits = [numpy_helper.from_array(w(c1, 3, 3, 3), "conv1.weight"),
             numpy_helper.from_array(np.zeros(c1, np.float32), "conv1.bias"),
             numpy_helper.from_array(w(c2, c1, 1, 1), "conv2.weight"),
             numpy_helper.from_array(rng.standard_normal(c2).astype(np.float32) * 0.1, "conv2.bias"),
             numpy_helper.from_array(fc if transposed_fc else np.ascontiguousarray(fc.T), "fc.weight"),
             numpy_helper.from_array(np.zeros(classes, np.float32), "fc.bias")]
    nodes = [helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="conv1",
                              pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2",
                              kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc",
                              transB=1 if transposed_fc else 0)]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                       ["N", 3, size, size])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    m.metadata_props.add(key="origin", value="test")
    return m


def _pruned(dense, sparsity=0.5, **pattern):
    spec = dict(pattern)
    return prune(dense, spec.pop("pattern"), sparsity, min_params=0, skip_first=False, **spec)[0]


def _data(tmp_path, n=64, size=8, seed=1, name="data.npz"):
    p = tmp_path / name
    np.savez(p, input=np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32))
    return p


def _inits(m):
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _without_initializer_values(m):
    """The model with every initializer's data blanked: what must not change at all."""
    c = onnx.ModelProto()
    c.CopyFrom(m)
    for t in c.graph.initializer:
        t.ClearField("raw_data")
        t.ClearField("float_data")
    return c.SerializeToString(deterministic=True)


def _stock(m, x):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x})[0]


# --------------------------------------------------------------------------- the zero pattern

@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: "-".join(str(v) for v in p.values()))
def test_pattern_bit_identical_and_only_values_change(tmp_path, pattern):
    dense = _cnn()
    pm = _pruned(dense, 0.5, **pattern)
    out, report = finetune(pm, dense, _data(tmp_path), steps=8, batch_size=16, lr=1e-2)
    a, b = _inits(pm), _inits(out)
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith("weight"):
            # exact zeros in the same places, and their bytes too
            np.testing.assert_array_equal(a[name] == 0, b[name] == 0, err_msg=name)
            np.testing.assert_array_equal(a[name][a[name] == 0].view(np.uint32),
                                          b[name][a[name] == 0].view(np.uint32))
    assert any(not np.array_equal(a[n], b[n]) for n in a), "training changed nothing"
    assert _without_initializer_values(out) == _without_initializer_values(pm)
    assert report.steps == 8 and report.stopped_by == "steps" and report.images == 128
    # convert packs the result exactly as it packs the input: same ops, same index tensors
    ca, _ = convert(pm)
    cb, _ = convert(out)
    assert [n.op_type for n in ca.graph.node] == [n.op_type for n in cb.graph.node]
    ia, ib = _inits(ca), _inits(cb)
    for name, arr in ia.items():
        if arr.dtype.kind in "iu":
            np.testing.assert_array_equal(arr, ib[name], err_msg=name)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 1000), c1=st.sampled_from([4, 8, 12]), c2=st.sampled_from([8, 16]),
       pattern=st.sampled_from(PATTERNS), sparsity=st.sampled_from([0.3, 0.5, 0.75]))
def test_pattern_kept_on_generated_models(tmp_path, seed, c1, c2, pattern, sparsity):
    dense = _cnn(seed, c1, c2, transposed_fc=bool(seed % 2))
    pm = _pruned(dense, sparsity, **pattern)
    out, _ = finetune(pm, dense, _data(tmp_path, n=32, seed=seed), steps=3, batch_size=8, lr=5e-2,
                      seed=seed)
    a, b = _inits(pm), _inits(out)
    for name in a:
        if name.endswith("weight"):
            np.testing.assert_array_equal(a[name] == 0, b[name] == 0, err_msg=name)


# --------------------------------------------------------------------------- learning and write-back

@pytest.mark.parametrize("relative_lr", [False, True])
def test_loss_falls_and_agreement_rises(tmp_path, relative_lr):
    dense = _cnn(3)
    pm = _pruned(dense, 0.75, pattern="block")
    out, report = finetune(pm, dense, _data(tmp_path, n=200), steps=60, batch_size=32,
                           lr=5e-2 if relative_lr else 1e-2, relative_lr=relative_lr)
    assert report.loss_last < 0.5 * report.loss_first
    # before/after are measured by onnxruntime on the held-back samples; check them independently
    held = report.before.samples
    assert held == 20
    assert report.after.rel_error < report.before.rel_error
    x = np.random.default_rng(9).standard_normal((256, 3, 8, 8)).astype(np.float32)
    t = _stock(dense, x)
    err = lambda m: float(((_stock(m, x) - t) ** 2).sum() / (t ** 2).sum())  # noqa: E731
    assert err(out) < 0.7 * err(pm)


def test_train_pruned_keeps_the_dense_layers_bit_for_bit(tmp_path):
    """train="pruned": the pruned layers' weights and biases train, the layers left dense (here
    the first conv and the classifier) keep the input's values byte for byte, and the loss
    still falls."""
    dense = _cnn(3)
    pm = prune(dense, "block", 0.75, min_params=0, include="conv2")[0]
    out, report = finetune(pm, dense, _data(tmp_path, n=200), steps=40, batch_size=32, lr=1e-2,
                           train="pruned")
    a, b = _inits(pm), _inits(out)
    for name in ("conv1.weight", "conv1.bias", "fc.weight", "fc.bias"):
        assert a[name].tobytes() == b[name].tobytes(), name
    for name in ("conv2.weight", "conv2.bias"):
        assert not np.array_equal(a[name], b[name]), name
    np.testing.assert_array_equal(a["conv2.weight"] == 0, b["conv2.weight"] == 0)
    assert report.settings["train"] == "pruned" and report.settings["trained_tensors"] == 2
    assert report.loss_last < report.loss_first
    # with gradual pruning: the layers prune recorded train (and reach the target), no other
    ramped, _ = finetune(pm, dense, _data(tmp_path, n=64), steps=6, batch_size=16, lr=1e-2,
                         sparsity=0.9, train="pruned")
    c = _inits(ramped)
    assert c["fc.weight"].tobytes() == a["fc.weight"].tobytes()
    assert float((c["conv2.weight"] == 0).mean()) >= 0.85
    full, _ = finetune(pm, dense, _data(tmp_path, n=200), steps=2, batch_size=32, lr=1e-2)
    assert not np.array_equal(_inits(full)["fc.weight"], a["fc.weight"])  # "all" trains it
    with pytest.raises(SparsekitError, match="train must be one of"):
        finetune(pm, dense, _data(tmp_path), steps=1, train="dense")


@pytest.mark.parametrize("relative_lr", [False, True])
@pytest.mark.parametrize("transposed_fc", [False, True])
def test_zero_learning_rate_gives_back_the_input_bit_for_bit(tmp_path, transposed_fc, relative_lr):
    dense = _cnn(transposed_fc=transposed_fc)
    pm = _pruned(dense, 0.5, pattern="block")
    out, _ = finetune(pm, dense, _data(tmp_path), steps=3, batch_size=8, lr=0.0, relative_lr=relative_lr)
    assert out.SerializeToString(deterministic=True) == pm.SerializeToString(deterministic=True)


@pytest.mark.parametrize("transposed_fc", [False, True])
def test_relative_lr_steps_each_output_channel_by_its_own_scale(tmp_path, transposed_fc):
    """With relative_lr, one step moves each output channel of a weight by about lr times the RMS
    of that channel's nonzero weights, whatever the channel's scale (folded BatchNorms make
    channels differ by orders of magnitude)."""
    dense = _cnn(transposed_fc=transposed_fc)
    scale = np.logspace(-2, 1, 16).astype(np.float32)    # conv2's 16 channels, 1e-2 .. 10
    for t in dense.graph.initializer:
        if t.name == "conv2.weight":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * scale[:, None, None, None], t.name))
    pm = _pruned(dense, 0.5, pattern="bank", bank_size=8)    # every channel keeps half its weights
    lr = 1e-1     # the first step is in the warm-up: a small fraction of it
    out, _ = finetune(pm, dense, _data(tmp_path), steps=1, batch_size=16, lr=lr, relative_lr=True,
                      schedule="constant", augment=False, holdout=0.0)
    before, after = _inits(pm), _inits(out)
    w0, w1 = before["conv2.weight"].reshape(16, -1), after["conv2.weight"].reshape(16, -1)
    nz = w0 != 0
    rms = np.sqrt((w0 ** 2).sum(1) / nz.sum(1))
    step = np.abs(w1 - w0).max(1)
    # Adam's first step is ~lr per element (times the warm-up factor); relative: times the rms
    ratio = step / rms
    moved = ratio > 0
    assert moved.sum() >= 14
    assert ratio[moved].max() / ratio[moved].min() < 20      # absolute steps would differ ~1000x
    assert (ratio <= lr * 1.01).all()
    # the Gemm weight's scale is per output column when stored [K, M] (transB=0), per row otherwise
    f0, f1 = before["fc.weight"], after["fc.weight"]
    per = f0 if transposed_fc else f0.T
    rms_fc = np.sqrt((per ** 2).sum(1) / np.maximum((per != 0).sum(1), 1))
    step_fc = np.abs(f1 - f0) if transposed_fc else np.abs(f1 - f0).T
    assert (step_fc.max(1) <= lr * 1.01 * rms_fc).all()


def _shared_weight_models():
    """Two MatMuls reading one weight initializer: y = x W + relu(x W) W'... with W shared."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 16)).astype(np.float32) / 4
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm1"),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["b"], name="mm2"),
             helper.make_node("Add", ["b", "bias"], ["y"])]
    g = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                          [numpy_helper.from_array(w, "w"),
                           numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "bias")])
    dense = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    pm = prune(dense, "block", 0.5, min_params=0, skip_first=False)[0]
    return dense, pm


def test_shared_weight_is_one_parameter(tmp_path):
    dense, pm = _shared_weight_models()
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(2).standard_normal((64, 16)).astype(np.float32))
    same, _ = finetune(pm, dense, data, steps=2, batch_size=8, lr=0.0)
    assert same.SerializeToString(deterministic=True) == pm.SerializeToString(deterministic=True)
    out, report = finetune(pm, dense, data, steps=20, batch_size=16, lr=1e-2)
    a, b = _inits(pm)["w"], _inits(out)["w"]
    np.testing.assert_array_equal(a == 0, b == 0)
    assert not np.array_equal(a, b)
    assert report.before.agreement is not None   # [N, 16] scores: KL and top-1 agreement


def test_mse_for_outputs_that_are_not_class_scores(tmp_path):
    dense, pm = _shared_weight_models()
    # a [N, 1] output is not a class-score output: the loss is MSE and there is no agreement
    for m in (dense, pm):
        m.graph.node.append(helper.make_node("ReduceSum", ["y", "axes"], ["s"], keepdims=1))
        m.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
        m.graph.output[0].CopyFrom(helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1]))
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(2).standard_normal((64, 16)).astype(np.float32))
    out, report = finetune(pm, dense, data, steps=30, batch_size=16, lr=1e-2)
    assert report.before.agreement is None and report.after.rel_error < report.before.rel_error


def test_feature_loss_uses_pruned_layer_outputs(tmp_path):
    dense = _cnn(5)
    pm = _pruned(dense, 0.75, pattern="block")
    out, report = finetune(pm, dense, _data(tmp_path, n=100), steps=20, batch_size=16, lr=5e-3,
                           feature_weight=1.0)
    assert not report.notes
    assert report.after.rel_error < report.before.rel_error


# --------------------------------------------------------------------------- gradual pruning

@pytest.mark.parametrize("ema", [0.0, 0.9])   # with ema the average is what gets the masks
def test_gradual_pruning_reaches_the_target_within_the_pattern(tmp_path, ema):
    dense = _cnn(c1=8, c2=16)
    pm = _pruned(dense, 0.5, pattern="block")
    out, report = finetune(pm, dense, _data(tmp_path), steps=12, batch_size=8, lr=1e-3, sparsity=0.75,
                           ema=ema)
    a, b = _inits(pm), _inits(out)
    meta = json.loads(next(p.value for p in out.metadata_props if p.key == "sparsekit.recipe"))["layers"]
    for name in ("conv1.weight", "conv2.weight", "fc.weight"):
        assert np.all(b[name][a[name] == 0] == 0), "a pruned weight came back"
        assert abs(np.mean(b[name] == 0) - 0.75) < 0.05, name
    for row in report.layers:
        assert row.sparsity_after > row.sparsity_before
        assert abs(meta[row.name]["achieved"] - row.sparsity_after) < 1e-6
        assert meta[row.name]["sparsity"] == 0.75
    # still 1x4 blocks: every group of 4 output channels keeps or drops a position together
    blocks = (b["conv2.weight"].reshape(4, 4, 8) != 0)
    assert np.all(blocks.all(axis=1) | ~blocks.any(axis=1))


# --------------------------------------------------------------------------- long-job manners

@pytest.mark.parametrize("ema", [0.0, 0.7])   # with ema the checkpoint carries the average too
def test_interrupt_writes_a_checkpoint_and_resume_finishes_the_same_job(tmp_path, ema):
    dense = _cnn()
    pm = _pruned(dense, 0.5, pattern="block")
    data = _data(tmp_path)
    ckpt = tmp_path / "job.ckpt"
    full, _ = finetune(pm, dense, data, steps=6, batch_size=8, lr=1e-2, ema=ema)

    def stop_at_3(info):
        if info["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(SparsekitInterrupted, match="checkpoint at step 3"):
        finetune(pm, dense, data, steps=6, batch_size=8, lr=1e-2, checkpoint=ckpt, progress=stop_at_3,
                 ema=ema)
    assert ckpt.is_file()
    resumed, report = finetune(pm, dense, data, steps=6, batch_size=8, lr=1e-2, checkpoint=ckpt, resume=True,
                               ema=ema)
    assert report.steps == 6 and any("resumed" in n for n in report.notes)
    a, b = _inits(full), _inits(resumed)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    with pytest.raises(SparsekitError, match="different job"):
        finetune(pm, dense, data, steps=6, batch_size=8, lr=2e-2, checkpoint=ckpt, resume=True)


def test_seconds_budget_stops_the_job(tmp_path):
    dense = _cnn()
    pm = _pruned(dense, 0.5, pattern="block")
    _, report = finetune(pm, dense, _data(tmp_path), seconds=0.5, steps=100000, batch_size=8)
    assert report.stopped_by == "seconds" and 0 < report.steps < 100000


# --------------------------------------------------------------------------- bad input

def test_bad_input_is_one_clear_error(tmp_path):
    dense = _cnn()
    pm = _pruned(dense, 0.5, pattern="block")
    data = _data(tmp_path)
    with pytest.raises(SparsekitError, match="no pruned weights"):
        finetune(dense, dense, data, steps=1)
    other = _cnn(classes=7)
    with pytest.raises(SparsekitError, match="disagree on output 'logits'"):
        finetune(pm, other, data, steps=1)
    renamed = _cnn()
    renamed.graph.input[0].name = "image"
    renamed.graph.node[0].input[0] = "image"
    with pytest.raises(SparsekitError, match="different inputs"):
        finetune(pm, renamed, data, steps=1)
    with pytest.raises(SparsekitError, match="steps or --seconds"):
        finetune(pm, dense, data)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(SparsekitError, match="not a readable .npz"):
        finetune(pm, dense, bad, steps=1)
    with pytest.raises(SparsekitError, match="no such data"):
        finetune(pm, dense, tmp_path / "missing.npz", steps=1)
    converted, _ = convert(pm)
    with pytest.raises(SparsekitError, match="plain ONNX models, before convert"):
        finetune(converted, dense, data, steps=1)


def test_missing_torch_names_the_extra(tmp_path, monkeypatch):
    dense = _cnn()
    pm = _pruned(dense, 0.5, pattern="block")
    monkeypatch.setitem(sys.modules, "torch", None)   # import torch -> ImportError
    with pytest.raises(SparsekitError, match=r"sparsekit\[train\]"):
        finetune(pm, dense, _data(tmp_path), steps=1)


# --------------------------------------------------------------------------- the command

def _run(args, capsys):
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_writes_model_and_json_report(tmp_path, capsys):
    dense = _cnn()
    pm = _pruned(dense, 0.5, pattern="block")
    onnx.save(dense, tmp_path / "dense.onnx")
    onnx.save(pm, tmp_path / "pruned.onnx")
    before = (tmp_path / "pruned.onnx").read_bytes()
    out = tmp_path / "tuned.onnx"
    args = ["finetune", tmp_path / "pruned.onnx", "-o", out, "--teacher", tmp_path / "dense.onnx",
            "--data", _data(tmp_path), "--steps", 4, "--batch-size", 8, "--lr", "0.01"]
    code, stdout, stderr = _run(args + ["--json"], capsys)
    assert code == 0, stderr
    rep = json.loads(stdout)
    assert rep["steps"] == 4 and rep["before"]["agreement"] is not None and rep["after"]["samples"] == 6
    assert (tmp_path / "pruned.onnx").read_bytes() == before          # input untouched
    assert not (tmp_path / "tuned.onnx.ckpt").exists()                 # finished: no stale checkpoint
    onnx.checker.check_model(onnx.load(out))
    code, stdout, stderr = _run(args, capsys)                         # exists, no --force
    assert code == 1 and "already exists" in stderr and len(stderr.strip().splitlines()) == 1
    code, stdout, stderr = _run(args + ["--force"], capsys)
    assert code == 0 and "teacher agreement" in stdout and "pruned layers" in stdout
    code, stdout, stderr = _run(args + ["--force", "--train", "pruned", "--json"], capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["settings"]["train"] == "pruned"
    code, stdout, stderr = _run(args + ["--force", "--ema", "0.9", "--json"], capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["settings"]["ema"] == 0.9


@pytest.mark.parametrize("extra,needle", [
    (["--teacher", "{tmp}/missing.onnx"], "missing.onnx"),
    (["--data", "{tmp}/nothing"], "no such data"),
    (["--sparsity", "1.5"], "--sparsity"),
    (["--resume"], "no checkpoint"),
])
def test_cli_bad_input_writes_nothing(tmp_path, capsys, extra, needle):
    dense = _cnn()
    onnx.save(dense, tmp_path / "dense.onnx")
    onnx.save(_pruned(dense, 0.5, pattern="block"), tmp_path / "pruned.onnx")
    base = {"--teacher": str(tmp_path / "dense.onnx"), "--data": str(_data(tmp_path))}
    for k, v in zip(extra[::2], extra[1::2]):
        base[k] = v.format(tmp=tmp_path)
    args = ["finetune", tmp_path / "pruned.onnx", "-o", tmp_path / "out.onnx", "--steps", 2]
    for k, v in base.items():
        args += [k, v]
    args += [a for a in extra if a.startswith("--") and a not in base]
    code, stdout, stderr = _run(args, capsys)
    assert code != 0 and needle in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_real_torch_export_with_probability_output(tmp_path):
    from test_torch_graph import exported_model
    dense = exported_model()
    pm = prune(dense, "bank", 0.5, bank_size=4, min_params=0, skip_first=False)[0]
    data = tmp_path / "x.npz"
    np.savez(data, input=np.random.default_rng(4).standard_normal((80, 3, 16, 16)).astype(np.float32))
    out, report = finetune(pm, dense, data, steps=25, batch_size=16, lr=5e-3)
    a, b = _inits(pm), _inits(out)
    weights = [t for t in a if a[t].ndim >= 2 and np.any(a[t] == 0)]
    assert len(weights) >= 4     # convs, Gemms and the LSTM's W and R
    for name in weights:
        np.testing.assert_array_equal(a[name] == 0, b[name] == 0, err_msg=name)
    assert report.before.kl is not None and report.after.kl < report.before.kl


def test_cli_ctrl_c_writes_only_a_checkpoint_and_resume_finishes(tmp_path, capsys, monkeypatch):
    from sparsekit import training_data
    dense = _cnn()
    onnx.save(dense, tmp_path / "dense.onnx")
    onnx.save(_pruned(dense, 0.5, pattern="block"), tmp_path / "pruned.onnx")
    out = tmp_path / "tuned.onnx"
    args = ["finetune", tmp_path / "pruned.onnx", "-o", out, "--teacher", tmp_path / "dense.onnx",
            "--data", _data(tmp_path), "--steps", 5, "--batch-size", 8]
    real_batch = training_data.TrainingData.batch
    calls = {"n": 0}

    def interrupted_batch(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt   # what Ctrl-C raises in the middle of a step
        return real_batch(self, *a, **k)

    monkeypatch.setattr(training_data.TrainingData, "batch", interrupted_batch)
    code, stdout, stderr = _run(args, capsys)
    assert code == 130 and "checkpoint at step 2" in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists() and (tmp_path / "tuned.onnx.ckpt").is_file()
    code, stdout, stderr = _run(args + ["--resume", "--json"], capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["steps"] == 5 and out.is_file()
    assert not (tmp_path / "tuned.onnx.ckpt").exists()


def test_sequence_first_fixed_input_trains_on_whole_runs(tmp_path):
    """A [T=6, 1] token input (a fixed leading dim, as the zoo's LSTM LM): samples are whole runs
    of 6 rows, ints are never mixed, and the LSTM's bank-pruned W and R keep their zeros."""
    rng = np.random.default_rng(0)
    V, E, H = 20, 8, 16
    inits = [numpy_helper.from_array(rng.standard_normal((V, E)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.standard_normal((1, 4 * H, E)).astype(np.float32) / 3, "W"),
             numpy_helper.from_array(rng.standard_normal((1, 4 * H, H)).astype(np.float32) / 4, "R"),
             numpy_helper.from_array(rng.standard_normal((H, V)).astype(np.float32) / 4, "out.weight")]
    nodes = [helper.make_node("Gather", ["emb", "tokens"], ["e"], axis=0),
             helper.make_node("LSTM", ["e", "W", "R"], ["y", "yh"], hidden_size=H, name="lstm"),
             helper.make_node("Squeeze", ["y", "ax"], ["ys"]),
             helper.make_node("MatMul", ["ys", "out.weight"], ["logits"], name="decoder")]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax"))
    g = helper.make_graph(nodes, "lm", [helper.make_tensor_value_info("tokens", TensorProto.INT64, [6, 1])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [6, 1, V])], inits)
    dense = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    pm = prune(dense, "bank", 0.5, bank_size=8, min_params=0, skip_first=False)[0]
    data = tmp_path / "tokens.npz"
    np.savez(data, tokens=rng.integers(0, V, (6 * 30, 1)).astype(np.int64))
    out, report = finetune(pm, dense, data, steps=15, batch_size=24, lr=1e-2)
    a, b = _inits(pm), _inits(out)
    for name in ("W", "R", "out.weight"):
        assert np.any(a[name] == 0), name
        np.testing.assert_array_equal(a[name] == 0, b[name] == 0, err_msg=name)
    assert report.images == 15 * 24 and report.before.samples == 3 * 6   # 3 held-back runs of 6 steps
    assert report.after.kl < report.before.kl
    with pytest.raises(SparsekitError, match="runs of 6 rows"):
        bad = tmp_path / "bad.npz"
        np.savez(bad, tokens=np.zeros((7, 1), np.int64))
        finetune(pm, dense, bad, steps=1)


# --------------------------------------------------------------------------- image folders, --train-size

def _photo_folder(tmp_path, n=6, side=48):
    """A folder of PNG photos: smooth colour fields with a few discs (every crop differs)."""
    from PIL import Image
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for i in range(n):
        img = np.stack([np.sin(6 * xx * rng.uniform(0.5, 2) + c) * 0.5 + 0.5 for c in range(3)], -1)
        for _ in range(4):
            cy, cx, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.1, 0.3)]
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 1, 3)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_train_size_trains_smaller_crops_and_evaluates_at_full_size(tmp_path):
    from sparsekit.training_data import load_training_data
    dense = _cnn(4, size=32)
    pm = _pruned(dense, 0.75, pattern="block")
    folder = _photo_folder(tmp_path)
    data = load_training_data(folder, pm, "imagenet", holdout=0.34, train_size=16)
    batch = data.batch(4, np.random.default_rng(0))["input"]
    assert batch.shape == (4, 3, 16, 16)
    assert data.eval_inputs["input"].shape[1:] == (3, 32, 32)
    out, report = finetune(pm, dense, folder, preprocess="imagenet", steps=30, batch_size=8, lr=5e-3,
                           holdout=0.34, train_size=16)
    assert report.settings["train_size"] == 16
    assert report.loss_last < report.loss_first
    # the pattern holds and only values changed
    for name, before in _inits(pm).items():
        if name.endswith("weight"):
            np.testing.assert_array_equal(_inits(out)[name] == 0, before == 0)
    assert _without_initializer_values(out) == _without_initializer_values(pm)
    # evaluation at 32x32 by stock onnxruntime: the written model is what the report measured
    x = data.eval_inputs["input"]
    t, s = _stock(dense, x), _stock(out, x)
    assert np.isclose(report.after.rel_error, float(((s - t) ** 2).sum() / (t ** 2).sum()), rtol=1e-3)


def test_full_size_last_ends_at_the_model_size(tmp_path, monkeypatch):
    from sparsekit.training_data import load_training_data
    dense = _cnn(4, size=32)
    pm = _pruned(dense, 0.75, pattern="block")
    folder = _photo_folder(tmp_path)
    data = load_training_data(folder, pm, "imagenet", holdout=0.34, train_size=16)
    rng = np.random.default_rng(0)
    assert data.batch(2, rng)["input"].shape == (2, 3, 16, 16)
    data.use_full_size()
    assert data.batch(2, rng)["input"].shape == (2, 3, 32, 32)
    from sparsekit.training_data import TrainingData
    sizes, batch = [], TrainingData.batch

    def recording(self, *a, **k):   # the crop size of every training batch finetune draws
        out = batch(self, *a, **k)
        sizes.append(out["input"].shape[2:])
        return out
    monkeypatch.setattr(TrainingData, "batch", recording)
    out, report = finetune(pm, dense, folder, preprocess="imagenet", steps=10, batch_size=8, lr=5e-3,
                           holdout=0.34, train_size=16, full_size_last=0.5)
    assert sizes[-10:] == [(16, 16)] * 5 + [(32, 32)] * 5   # the 10 steps (a size check comes first)
    assert report.settings["full_size_last"] == 0.5
    assert "5 of 10 steps at the model's size (32x32), the others at 16x16" in report.notes
    for name, before in _inits(pm).items():
        if name.endswith("weight"):
            np.testing.assert_array_equal(_inits(out)[name] == 0, before == 0)
    assert _without_initializer_values(out) == _without_initializer_values(pm)


def test_full_size_last_errors(tmp_path):
    folder = _photo_folder(tmp_path, n=3)
    cnn = _cnn(size=24)
    pm = _pruned(cnn, pattern="block")
    with pytest.raises(SparsekitError, match="--full-size-last needs --train-size"):
        finetune(pm, cnn, folder, preprocess="imagenet", steps=1, full_size_last=0.2)
    with pytest.raises(SparsekitError, match=r"full_size_last must be in \[0, 1\)"):
        finetune(pm, cnn, folder, preprocess="imagenet", steps=1, train_size=16, full_size_last=1.0)


def test_ema_writes_the_average_of_the_steps(tmp_path, monkeypatch):
    """--ema: the written weights are the moving average of every step's weights (recorded
    here as Adam leaves them), computed independently in numpy with the documented decay."""
    import torch
    from sparsekit.torch_graph import OnnxModule
    dense = _cnn(5, size=16)
    pm = _pruned(dense, 0.75, pattern="block")
    folder = _photo_folder(tmp_path, n=4)
    names, steps, step = [], [], torch.optim.Adam.step
    named = OnnxModule.named_weights

    def naming(self):
        out = named(self)
        names[:] = list(out)
        return out

    def recording(self, *a, **k):
        r = step(self, *a, **k)
        steps.append([q.detach().numpy().copy() for q in self.param_groups[0]["params"]])
        return r
    monkeypatch.setattr(OnnxModule, "named_weights", naming)
    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    decay = 0.3     # below the ramp's 0.4 at step 6: both the ramp and the cap are used
    out, report = finetune(pm, dense, folder, preprocess="imagenet", steps=6, batch_size=4,
                           lr=2e-2, holdout=0.25, schedule="constant", ema=decay)
    assert report.settings["ema"] == decay and len(steps) == 6
    assert any("moving average of the steps' weights (decay 0.3)" in n for n in report.notes)
    original, written = _inits(pm), _inits(out)
    for i, name in enumerate(names):
        avg = original[name].astype(np.float64)
        for t, values in enumerate(steps):
            d = min(decay, (1 + t) / (10 + t))
            avg = d * avg + (1 - d) * values[i]
        np.testing.assert_allclose(written[name], avg, rtol=1e-4, atol=1e-6)
        if name.endswith("weight"):
            np.testing.assert_array_equal(written[name] == 0, original[name] == 0)
            # the average is not the last step's weights
            assert np.abs(written[name] - steps[-1][i]).max() > 1e-4
    with pytest.raises(SparsekitError, match=r"ema must be in \[0, 1\)"):
        finetune(pm, dense, folder, preprocess="imagenet", steps=1, ema=1.0)


def _flatten_cnn(size=8, classes=5):
    """conv -> relu -> Flatten -> Gemm: the classifier is tied to the input size."""
    rng = np.random.default_rng(0)
    c = 4
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32), "cw"),
             numpy_helper.from_array(rng.standard_normal((c * size * size, classes)).astype(np.float32) * 0.1,
                                     "fw")]
    nodes = [helper.make_node("Conv", ["input", "cw"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["logits"], name="fc")]
    g = helper.make_graph(nodes, "flat", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                        ["N", 3, size, size])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_train_size_errors(tmp_path):
    folder = _photo_folder(tmp_path, n=3)
    dense = _flatten_cnn(size=24)
    pm = _pruned(dense, 0.5, pattern="block")
    with pytest.raises(SparsekitError, match=r"--train-size 16: the model does not run at 16x16"):
        finetune(pm, dense, folder, preprocess="imagenet", steps=1, train_size=16)
    cnn = _cnn(size=24)
    with pytest.raises(SparsekitError, match="applies to a folder of images"):
        finetune(_pruned(cnn, pattern="block"), cnn, _data(tmp_path, size=24), steps=1, train_size=16)
    with pytest.raises(SparsekitError, match=r"train size must be an integer in \[16, 4096\]"):
        finetune(_pruned(cnn, pattern="block"), cnn, folder, preprocess="imagenet", steps=1, train_size=8)
