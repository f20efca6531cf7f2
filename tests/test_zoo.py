"""The reference-architecture zoo: valid ONNX, runs in stock onnxruntime, the right structure."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from sparsekit import models
from sparsekit.errors import SparsekitError

SMALL = {
    "mobilenet_v1": dict(resolution=64, width=0.25),
    "mobilenet_v2": dict(resolution=64, width=0.25),
    "efficientnet_lite0": dict(resolution=64, width=0.25),
    "resnet50": dict(resolution=64, width=0.25),
    "bert_layer": dict(seq=16, hidden=64, heads=4, ffn=128),
    "lstm_lm": dict(hidden=32, vocab=50, seq=5),
}

# more small variants: the other BN setting, symbolic seq, stacked LSTM with state
VARIANTS = [(name, kw) for name, kw in SMALL.items()] + [
    ("mobilenet_v1", dict(resolution=64, width=0.25, bn=True)),
    ("mobilenet_v2", dict(resolution=64, width=0.25, bn=True)),
    ("efficientnet_lite0", dict(resolution=64, width=0.25, bn=True)),
    ("resnet50", dict(resolution=64, width=0.25, bn=False)),
    ("bert_layer", dict(seq=16, hidden=64, heads=4, ffn=128, symbolic_seq=True)),
    ("lstm_lm", dict(hidden=32, vocab=50, seq=5, layers=2, with_state=True)),
]

FULL_OUTPUT = {
    "mobilenet_v1": [1, 1000],
    "mobilenet_v2": [1, 1000],
    "efficientnet_lite0": [1, 1000],
    "resnet50": [1, 1000],
    "bert_layer": [1, 128, 768],
    "lstm_lm": [35, 1, 10000],
}


# ---------------------------------------------------------------------------- helpers
def _dims(vi):
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _feeds(model, seq_len=7, seed=1):
    """Random inputs for every graph input (symbolic dims become ``seq_len``)."""
    rng = np.random.default_rng(seed)
    vocab = None
    for init in model.graph.initializer:
        if init.name == "encoder.weight":
            vocab = init.dims[0]
    feeds = {}
    for vi in model.graph.input:
        shape = [d if isinstance(d, int) else seq_len for d in _dims(vi)]
        if vi.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            feeds[vi.name] = rng.integers(0, vocab, size=shape, dtype=np.int64)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ops(model):
    return Counter(n.op_type for n in model.graph.node)


def _check_and_run(model, expected_output_shape=None):
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version in (8, 9)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert all(n.domain == "" for n in model.graph.node)
    # every node named, names unique; value names unique
    node_names = [n.name for n in model.graph.node]
    assert all(node_names) and len(set(node_names)) == len(node_names)
    produced = [o for n in model.graph.node for o in n.output if o]
    produced += [t.name for t in model.graph.initializer] + [i.name for i in model.graph.input]
    assert len(set(produced)) == len(produced)
    outs = _session(model).run(None, _feeds(model))
    y = outs[0]
    if expected_output_shape is not None:
        assert list(y.shape) == expected_output_shape
    for o in outs:
        assert np.isfinite(o).all()
    assert np.std(y) > 1e-3, "output is (nearly) constant"
    assert len(np.unique(y)) > min(y.size // 2, 1000), "output has few distinct values"
    return outs


# ---------------------------------------------------------------------------- registry
def test_registry_names_and_descriptions():
    assert models.names() == ["mobilenet_v1", "mobilenet_v2", "efficientnet_lite0", "resnet50",
                              "bert_layer", "lstm_lm"]
    assert set(models.ZOO) == set(models.names())
    for name in models.names():
        text = models.describe(name)
        assert isinstance(text, str) and len(text) > 40 and "seed=0" in text
        assert callable(models.ZOO[name])


def test_unknown_model_and_parameter_errors():
    with pytest.raises(SparsekitError, match="unknown zoo model 'vgg16'.*mobilenet_v1"):
        models.build("vgg16")
    with pytest.raises(SparsekitError, match="unknown zoo model"):
        models.describe("vgg16")
    with pytest.raises(SparsekitError, match="no parameter 'depth'"):
        models.build("resnet50", depth=101)
    with pytest.raises(SparsekitError, match="divisible by heads"):
        models.build("bert_layer", hidden=64, heads=5)
    with pytest.raises(SparsekitError, match="resolution"):
        models.build("mobilenet_v1", resolution=16)
    with pytest.raises(SparsekitError, match="layers"):
        models.build("lstm_lm", hidden=8, vocab=10, layers=3)
    with pytest.raises(SparsekitError, match="bn"):
        models.build("resnet50", resolution=32, width=0.25, bn="yes")
    with pytest.raises(SparsekitError, match="num_classes"):
        models.build("mobilenet_v2", num_classes=0)


# ---------------------------------------------------------------------------- small models
@pytest.mark.parametrize("name,kw", VARIANTS, ids=[f"{n}-{'-'.join(f'{k}{v}' for k, v in kw.items())}" for n, kw in VARIANTS])
def test_small_model_checks_and_runs(name, kw):
    model = models.build(name, **kw)
    declared = _dims(model.graph.output[0])
    expected = None if any(isinstance(d, str) for d in declared) else declared
    _check_and_run(model, expected)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["sparsekit.zoo.model"] == name


@pytest.mark.parametrize("name", list(SMALL))
def test_small_model_is_deterministic(name):
    a = models.build(name, **SMALL[name]).SerializeToString()
    b = models.build(name, **SMALL[name]).SerializeToString()
    assert a == b
    c = models.build(name, **SMALL[name], seed=1).SerializeToString()
    assert c != a


# ---------------------------------------------------------------------------- structure
def test_mobilenet_v1_structure():
    for bn in (False, True):
        m = models.build("mobilenet_v1", **SMALL["mobilenet_v1"], bn=bn)
        ops = _ops(m)
        inits = _inits(m)
        convs = [n for n in m.graph.node if n.op_type == "Conv"]
        assert len(convs) == 27 and ops["Relu"] == 27 and ops["Gemm"] == 1
        assert ops["BatchNormalization"] == (27 if bn else 0)
        depthwise = [n for n in convs if _attrs(n)["group"] > 1]
        assert len(depthwise) == 13
        for n in depthwise:
            w = inits[n.input[1]]
            assert _attrs(n)["group"] == w.shape[0] and w.shape[1:] == (1, 3, 3)
        for n in convs:
            assert len(n.input) == (2 if bn else 3)
        stem = convs[0]
        assert _attrs(stem)["strides"] == [2, 2] and inits[stem.input[1]].shape == (8, 3, 3, 3)
        tail = [n.op_type for n in m.graph.node[-3:]]
        assert tail == ["GlobalAveragePool", "Flatten", "Gemm"]
        gemm = m.graph.node[-1]
        assert _attrs(gemm)["transB"] == 1 and inits[gemm.input[1]].shape == (1000, 256)
    full = models.build("mobilenet_v1")
    widths = [_inits(full)[n.input[1]].shape[0] for n in full.graph.node if n.op_type == "Conv"]
    assert widths[0] == 32 and widths[-1] == 1024


def test_mobilenet_v2_structure():
    # at width 0.25 the first block maps 8 -> 8 channels at stride 1, so it gains a residual
    # (torchvision's rule: stride 1 and in == out); the full-size model has exactly 10
    small = models.build("mobilenet_v2", **SMALL["mobilenet_v2"])
    assert _ops(small)["Add"] == 11
    m = models.build("mobilenet_v2")
    ops = _ops(m)
    inits = _inits(m)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 52 and ops["Clip"] == 35 and ops["Gemm"] == 1 and ops["Relu"] == 0
    assert sum(_attrs(n)["group"] > 1 for n in convs) == 17
    assert all(len(n.input) == 3 for n in convs)
    adds = [n for n in m.graph.node if n.op_type == "Add"]
    assert len(adds) == 10
    assert [n.name for n in adds][:3] == ["features.3.add", "features.5.add", "features.6.add"]
    for n in adds:  # residual: both operands are activations, not weights
        assert not any(i in inits for i in n.input)
    for n in m.graph.node:
        if n.op_type == "Clip":
            lo, hi = inits[n.input[1]], inits[n.input[2]]
            assert lo.shape == () and hi.shape == () and lo == 0.0 and hi == 6.0
    # every residual's second operand comes from a linear projection conv (no Clip between)
    producer = {o: n for n in m.graph.node for o in n.output}
    for n in adds:
        assert producer[n.input[1]].op_type == "Conv"
    assert inits[m.graph.node[-1].input[1]].shape == (1000, 1280)


def test_efficientnet_lite0_structure():
    for bn in (False, True):
        m = models.build("efficientnet_lite0", bn=bn)
        ops = _ops(m)
        inits = _inits(m)
        convs = [n for n in m.graph.node if n.op_type == "Conv"]
        assert len(convs) == 49 and ops["Clip"] == 33 and ops["Gemm"] == 1
        assert ops["Relu"] == 0 and ops["Sigmoid"] == 0 and ops["Mul"] == 0  # Lite: no SE, no swish
        assert ops["BatchNormalization"] == (49 if bn else 0)
        assert all(len(n.input) == (2 if bn else 3) for n in convs)
        depthwise = [n for n in convs if _attrs(n)["group"] > 1]
        assert len(depthwise) == 16
        # (kernel, stride, channels) of every depthwise conv, stage by stage
        got = [(_attrs(n)["kernel_shape"][0], _attrs(n)["strides"][0], _attrs(n)["group"])
               for n in depthwise]
        assert got == ([(3, 1, 32), (3, 2, 96), (3, 1, 144), (5, 2, 144), (5, 1, 240)]
                       + [(3, 2, 240)] + [(3, 1, 480)] * 2 + [(5, 1, 480)] + [(5, 1, 672)] * 2
                       + [(5, 2, 672)] + [(5, 1, 1152)] * 3 + [(3, 1, 1152)])
        for n in depthwise:
            k = _attrs(n)["kernel_shape"][0]
            assert _attrs(n)["pads"] == [k // 2] * 4
            assert inits[n.input[1]].shape == (_attrs(n)["group"], 1, k, k)
        stem = convs[0]
        assert stem.name == "conv_stem" and _attrs(stem)["strides"] == [2, 2]
        assert inits[stem.input[1]].shape == (32, 3, 3, 3)
        # projections (1x1, group 1, not followed by an activation) and their widths
        proj = [n for n in convs if n.name.endswith(".conv_pwl") or n.name == "blocks.0.0.conv_pw"]
        assert [inits[n.input[1]].shape[0] for n in proj] == \
            [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320]
        assert convs[-1].name == "conv_head" and inits[convs[-1].input[1]].shape == (1280, 320, 1, 1)
        adds = [n.name for n in m.graph.node if n.op_type == "Add"]
        assert adds == ["blocks.1.1.add", "blocks.2.1.add", "blocks.3.1.add", "blocks.3.2.add",
                        "blocks.4.1.add", "blocks.4.2.add", "blocks.5.1.add", "blocks.5.2.add",
                        "blocks.5.3.add"]
        producer = {o: n for n in m.graph.node for o in n.output}
        for n in m.graph.node:
            if n.op_type == "Add":  # residual: input + linear projection (+ bn), no Clip between
                assert producer[n.input[1]].op_type in ("Conv", "BatchNormalization")
                assert not any(i in inits for i in n.input)
        tail = [n.op_type for n in m.graph.node[-3:]]
        assert tail == ["GlobalAveragePool", "Flatten", "Gemm"]
        assert inits[m.graph.node[-1].input[1]].shape == (1000, 1280)


def test_resnet50_structure():
    m = models.build("resnet50", **SMALL["resnet50"])
    ops = _ops(m)
    inits = _inits(m)
    assert ops["Conv"] == 53 and ops["Add"] == 16 and ops["BatchNormalization"] == 53
    assert ops["Relu"] == 49 and ops["MaxPool"] == 1 and ops["Gemm"] == 1
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert all(len(n.input) == 2 for n in convs)  # bn=True: convs carry no bias
    stem = convs[0]
    assert _attrs(stem)["kernel_shape"] == [7, 7] and _attrs(stem)["strides"] == [2, 2]
    downsample = [n for n in convs if ".downsample." in n.name]
    assert len(downsample) == 4
    assert [_attrs(n)["strides"] for n in downsample] == [[1, 1], [2, 2], [2, 2], [2, 2]]
    for n in m.graph.node:
        if n.op_type == "BatchNormalization":
            assert (inits[n.input[4]] > 0).all()
    assert m.graph.node[0].name == "conv1"
    assert "layer1.0.conv2" in {n.name for n in m.graph.node}
    full = models.build("resnet50", bn=False)
    assert _ops(full)["BatchNormalization"] == 0
    assert inits_shape(full, "fc.weight") == (1000, 2048)
    assert all(len(n.input) == 3 for n in full.graph.node if n.op_type == "Conv")


def inits_shape(model, name):
    for t in model.graph.initializer:
        if t.name == name:
            return tuple(t.dims)
    raise KeyError(name)


def test_bert_layer_structure():
    m = models.build("bert_layer", **SMALL["bert_layer"])
    ops = _ops(m)
    inits = _inits(m)
    matmuls = [n for n in m.graph.node if n.op_type == "MatMul"]
    weighted = [n for n in matmuls if n.input[1] in inits]
    assert len(matmuls) == 8 and len(weighted) == 6
    assert sorted(inits[n.input[1]].shape for n in weighted) == sorted(
        [(64, 64)] * 4 + [(64, 128), (128, 64)]
    )
    assert ops["LayerNormalization"] == 2 and ops["Softmax"] == 1 and ops["Erf"] == 1
    assert ops["Gelu"] == 0 and ops["Reshape"] == 4 and ops["Transpose"] == 4


def test_lstm_lm_structure():
    m = models.build("lstm_lm", hidden=32, vocab=50, seq=5, layers=2)
    inits = _inits(m)
    lstms = [n for n in m.graph.node if n.op_type == "LSTM"]
    assert len(lstms) == 2
    for n in lstms:
        a = _attrs(n)
        assert a["hidden_size"] == 32 and a["direction"] == b"forward"
        assert inits[n.input[1]].shape == (1, 128, 32)
        assert inits[n.input[2]].shape == (1, 128, 32)
        assert inits[n.input[3]].shape == (1, 256)
    assert [i.name for i in m.graph.input] == ["tokens"]
    assert _dims(m.graph.output[0]) == [5, 1, 50]


# ---------------------------------------------------------------------------- numpy references
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _lstm_ref(x, w, r, b, h, c):
    """ONNX LSTM, forward, gate order i, o, f, c; x [seq, 1, in]; returns Y [seq, 1, H], h, c."""
    hidden = r.shape[-1]
    w, r = w[0].astype(np.float64), r[0].astype(np.float64)
    bias = (b[0, : 4 * hidden] + b[0, 4 * hidden :]).astype(np.float64)
    ys = []
    for t in range(x.shape[0]):
        gates = x[t] @ w.T + h @ r.T + bias
        i, o, f, g = np.split(gates, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        ys.append(h)
    return np.stack(ys), h, c


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_lm_matches_numpy(layers):
    hidden, vocab, seq = 32, 50, 5
    m = models.build("lstm_lm", hidden=hidden, vocab=vocab, seq=seq, layers=layers, with_state=True)
    _check_and_run(m, [seq, 1, vocab])
    inits = _inits(m)
    feeds = _feeds(m, seed=3)
    logits, h_n, c_n = _session(m).run(["logits", "h_n", "c_n"], feeds)

    x = inits["encoder.weight"][feeds["tokens"][:, 0]][:, None, :].astype(np.float64)
    hs, cs = [], []
    for layer in range(layers):
        p = f"rnn.{layer}" if layers > 1 else "rnn"
        x, h, c = _lstm_ref(
            x, inits[f"{p}.W"], inits[f"{p}.R"], inits[f"{p}.B"],
            feeds["initial_h"][layer].astype(np.float64), feeds["initial_c"][layer].astype(np.float64),
        )
        hs.append(h)
        cs.append(c)
    ref = x @ inits["decoder.weight"] + inits["decoder.bias"]
    # the first timestep alone, then the whole sequence and the final state
    np.testing.assert_allclose(logits[0], ref[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h_n, np.stack(hs), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c_n, np.stack(cs), rtol=1e-4, atol=1e-5)


def _layer_norm(x, g, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _bert_ref(x, p, heads):
    from math import erf

    seq, hidden = x.shape[1], x.shape[2]
    d = hidden // heads

    def lin(v, name):
        return v @ p[f"{name}.weight"] + p[f"{name}.bias"]

    def split(v):
        return v.reshape(seq, heads, d).transpose(1, 0, 2)

    q = split(lin(x[0], "attention.self.query"))
    k = split(lin(x[0], "attention.self.key"))
    v = split(lin(x[0], "attention.self.value"))
    s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    ctx = (s @ v).transpose(1, 0, 2).reshape(seq, hidden)
    a = _layer_norm(lin(ctx, "attention.output.dense") + x[0],
                    p["attention.output.LayerNorm.weight"], p["attention.output.LayerNorm.bias"])
    h = lin(a, "intermediate.dense")
    h = h * 0.5 * (1.0 + np.vectorize(erf)(h / math.sqrt(2.0)))
    out = _layer_norm(lin(h, "output.dense") + a, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"])
    return out[None]


def test_bert_layer_matches_numpy_and_symbolic_seq():
    kw = SMALL["bert_layer"]
    m = models.build("bert_layer", **kw)
    p = {k: v.astype(np.float64) for k, v in _inits(m).items()}
    x = _feeds(m, seed=5)["hidden_states"]
    y = _session(m).run(None, {"hidden_states": x})[0]
    ref = _bert_ref(x.astype(np.float64), p, kw["heads"])
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)

    sym = models.build("bert_layer", **{**kw, "symbolic_seq": True})
    assert _dims(sym.graph.input[0]) == [1, "seq", kw["hidden"]]
    sess = _session(sym)
    np.testing.assert_allclose(sess.run(None, {"hidden_states": x})[0], y, rtol=1e-5, atol=1e-5)
    for seq in (3, 40):
        xs = np.random.default_rng(seq).standard_normal((1, seq, kw["hidden"])).astype(np.float32)
        ys = sess.run(None, {"hidden_states": xs})[0]
        assert ys.shape == (1, seq, kw["hidden"])
        np.testing.assert_allclose(ys, _bert_ref(xs.astype(np.float64), p, kw["heads"]), rtol=1e-4, atol=1e-4)


def test_resnet_bn_matches_folded_reference_on_stem():
    """The unfolded stem (Conv -> BatchNormalization -> Relu) equals numpy's folded conv."""
    m = models.build("resnet50", resolution=32, width=0.25)
    inits = _inits(m)
    stem_out = "relu_output"
    m.graph.output.insert(0, onnx.helper.make_tensor_value_info(stem_out, onnx.TensorProto.FLOAT, None))
    x = _feeds(m, seed=7)["input"]
    y = _session(m).run([stem_out], {"input": x})[0]
    w = inits["conv1.weight"].astype(np.float64)
    scale = inits["bn1.weight"] / np.sqrt(inits["bn1.running_var"] + 1e-5)
    shift = inits["bn1.bias"] - inits["bn1.running_mean"] * scale
    xp = np.pad(x[0].astype(np.float64), ((0, 0), (3, 3), (3, 3)))
    oh = y.shape[2]
    patches = np.stack(
        [xp[:, i : i + 2 * oh : 2, j : j + 2 * oh : 2] for i in range(7) for j in range(7)], axis=1
    )  # [3, 49, oh, oh]
    conv = w.reshape(w.shape[0], -1) @ patches.reshape(3 * 49, -1)  # im2col, rows (c, kh, kw)
    ref = np.maximum(conv * scale[:, None] + shift[:, None], 0).reshape(y.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- full size
@pytest.mark.parametrize("name", list(FULL_OUTPUT))
def test_full_size_model(name):
    # no wall-time assertion: CI shares a loaded machine; the parameter counts below pin the build
    model = models.build(name)
    _check_and_run(model, FULL_OUTPUT[name])
    meta = {p.key: p.value for p in model.metadata_props}
    n_params = int(meta["sparsekit.zoo.num_params"])
    expected = {
        "mobilenet_v1": 4_221_032,
        "mobilenet_v2": 3_487_816,
        "efficientnet_lite0": 4_631_000,
        "resnet50": 25_610_152,  # torchvision's 25,557,032 + BN running statistics
        "bert_layer": 7_087_872,
        "lstm_lm": 48_022_000,
    }[name]
    assert n_params == expected
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) and np.prod(t.dims) > 4)
    assert total == n_params
