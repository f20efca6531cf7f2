"""Sequence models (docs/sequence.md): SparseLSTM / SparseGRU against onnxruntime's LSTM / GRU,
prune/convert of LSTMs, GRUs and of a PyTorch-style transformer layer with a symbolic sequence
length, the bank-balanced SpMV kernels against numpy, and the ops' validation of untrusted
input."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import sparsekit
from sparsekit import _native
from sparsekit.patterns import bank_mask
from sparsekit.sequence import make_sparse_gru_node, make_sparse_lstm_node, pack_bank_rows
from ort_helpers import IR_VERSION, ONNX_OPSET, vinfo

AVAILABLE = set(_native.available_isas())
ISAS = [pytest.param(i, marks=pytest.mark.skipif(i not in AVAILABLE, reason=f"{i} unavailable"))
        for i in ("ref", "avx2", "avx512", "neon")]


def _model(nodes, inits, inputs, outputs=("Y", "Y_h", "Y_c")):
    g = helper.make_graph(nodes, "g", inputs, [vinfo(o, None) for o in outputs], inits)
    ops = [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid("ai.sparsekit", 1)]
    return helper.make_model(g, opset_imports=ops, ir_version=IR_VERSION)


def _weights(rng, D, H, I, sparsity, wbank, rbank):
    W = (rng.standard_normal((D, 4 * H, I)) / np.sqrt(max(1.0, (1 - sparsity) * I))).astype(np.float32)
    R = (rng.standard_normal((D, 4 * H, H)) / np.sqrt(max(1.0, (1 - sparsity) * H))).astype(np.float32)
    B = (0.3 * rng.standard_normal((D, 8 * H))).astype(np.float32)
    W *= bank_mask(W.reshape(D * 4 * H, I), sparsity, bank_size=wbank).reshape(W.shape)
    R *= bank_mask(R.reshape(D * 4 * H, H), sparsity, bank_size=rbank).reshape(R.shape)
    return W, R, B


def _pair(rng, direction, H, I, wbank, rbank, state, bias=True, sparsity=0.75):
    D = 2 if direction == "bidirectional" else 1
    W, R, B = _weights(rng, D, H, I, sparsity, wbank, rbank)
    extra = ["h0", "c0"] if state else []
    ins = ["X", "W", "R", "B" if bias else "", ""] + extra
    dense = _model([helper.make_node("LSTM", ins, ["Y", "Y_h", "Y_c"], hidden_size=H,
                                     direction=direction)],
                   [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"))],
                   [vinfo("X", ["S", "N", I])] + [vinfo(n, [D, "N", H]) for n in extra])
    node, inits = make_sparse_lstm_node("lstm", "X", ["Y", "Y_h", "Y_c"], W, R,
                                        B if bias else None, initial_h="h0" if state else "",
                                        initial_c="c0" if state else "", direction=direction,
                                        w_bank_size=wbank, r_bank_size=rbank)
    sparse = _model([node], inits, [vinfo("X", ["S", "N", I])] +
                    [vinfo(n, [D, "N", H]) for n in extra])
    return dense, sparse, D


def _close(got, want):
    for g, w in zip(got, want):
        assert g.shape == w.shape
        scale = max(1e-3, float(np.abs(w).max()))
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * scale)


# ------------------------------------------------------------------ SparseLSTM vs ORT LSTM --
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("H,I,wbank,rbank", [(5, 7, 4, 5), (24, 40, 16, 8), (33, 20, 20, 32),
                                             (40, 70, 64, 17), (20, 300, 300, 20)])
@pytest.mark.parametrize("state", [False, True])
def test_sparse_lstm_matches_onnxruntime(monkeypatch, isa, direction, H, I, wbank, rbank, state):
    monkeypatch.setenv("SPARSEKIT_ISA", isa)
    rng = np.random.default_rng(H * 7 + I)
    dense, sparse, D = _pair(rng, direction, H, I, wbank, rbank, state, bias=H != 33)
    ds = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"])
    for threads in (1, 2):
        ss = sparsekit.session(sparse, threads=threads)
        for S, N in ((1, 1), (2, 2), (2, 3), (17, 1), (64, 2)):
            feeds = {"X": rng.standard_normal((S, N, I)).astype(np.float32)}
            if state:
                feeds["h0"] = rng.standard_normal((D, N, H)).astype(np.float32)
                feeds["c0"] = rng.standard_normal((D, N, H)).astype(np.float32)
            _close(ss.run(None, feeds), ds.run(None, feeds))


def test_sparse_lstm_wide_recurrent_bank_uses_general_path():
    """r_bank_size > 256 (uint16 offsets): the recurrence runs on the SpMM kernel."""
    rng = np.random.default_rng(3)
    dense, sparse, D = _pair(rng, "forward", 300, 12, 12, 300, True)
    ds = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"])
    ss = sparsekit.session(sparse)
    feeds = {"X": rng.standard_normal((9, 2, 12)).astype(np.float32),
             "h0": rng.standard_normal((1, 2, 300)).astype(np.float32),
             "c0": rng.standard_normal((1, 2, 300)).astype(np.float32)}
    _close(ss.run(None, feeds), ds.run(None, feeds))


def test_sparse_lstm_run_time_shape_errors_leave_session_usable():
    rng = np.random.default_rng(4)
    _, sparse, _ = _pair(rng, "forward", 8, 6, 6, 8, True)
    sparse.graph.input[0].CopyFrom(vinfo("X", ["S", "N", "I"]))  # our check, not ORT's
    ss = sparsekit.session(sparse)
    x = rng.standard_normal((3, 2, 6)).astype(np.float32)
    h = np.zeros((1, 2, 8), np.float32)
    with pytest.raises(Exception, match="X has shape"):
        ss.run(None, {"X": x[..., :5], "h0": h, "c0": h})
    with pytest.raises(Exception, match="initial_h has shape"):
        ss.run(None, {"X": x, "h0": h[:, :1], "c0": h})
    ss.run(None, {"X": x, "h0": h, "c0": h})


# ------------------------------------------------------------------ SparseGRU vs ORT GRU --
def _gru_pair(rng, direction, H, I, wbank, rbank, state, lbr, bias=True, sparsity=0.75):
    D = 2 if direction == "bidirectional" else 1
    W = (rng.standard_normal((D, 3 * H, I)) / np.sqrt(max(1.0, (1 - sparsity) * I))).astype(np.float32)
    R = (rng.standard_normal((D, 3 * H, H)) / np.sqrt(max(1.0, (1 - sparsity) * H))).astype(np.float32)
    B = (0.3 * rng.standard_normal((D, 6 * H))).astype(np.float32)
    W *= bank_mask(W.reshape(D * 3 * H, I), sparsity, bank_size=wbank).reshape(W.shape)
    R *= bank_mask(R.reshape(D * 3 * H, H), sparsity, bank_size=rbank).reshape(R.shape)
    extra = ["h0"] if state else []
    ins = ["X", "W", "R", "B" if bias else "", ""] + extra
    dense = _model([helper.make_node("GRU", ins, ["Y", "Y_h"], hidden_size=H, direction=direction,
                                     linear_before_reset=lbr)],
                   [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"))],
                   [vinfo("X", ["S", "N", I])] + [vinfo(n, [D, "N", H]) for n in extra],
                   outputs=("Y", "Y_h"))
    node, inits = make_sparse_gru_node("gru", "X", ["Y", "Y_h"], W, R, B if bias else None,
                                       initial_h="h0" if state else "", direction=direction,
                                       linear_before_reset=lbr, w_bank_size=wbank,
                                       r_bank_size=rbank)
    sparse = _model([node], inits, [vinfo("X", ["S", "N", I])] +
                    [vinfo(n, [D, "N", H]) for n in extra], outputs=("Y", "Y_h"))
    return dense, sparse, D


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("H,I,wbank,rbank", [(5, 7, 4, 5), (24, 40, 16, 8), (33, 20, 20, 32),
                                             (40, 300, 300, 17)])
@pytest.mark.parametrize("state", [False, True])
@pytest.mark.parametrize("lbr", [0, 1])
def test_sparse_gru_matches_onnxruntime(monkeypatch, isa, direction, H, I, wbank, rbank, state,
                                        lbr):
    monkeypatch.setenv("SPARSEKIT_ISA", isa)
    rng = np.random.default_rng(H * 7 + I + lbr)
    dense, sparse, D = _gru_pair(rng, direction, H, I, wbank, rbank, state, lbr, bias=H != 33)
    ds = ort.InferenceSession(dense.SerializeToString(), providers=["CPUExecutionProvider"])
    for threads in (1, 2):
        ss = sparsekit.session(sparse, threads=threads)
        for S, N in ((1, 1), (2, 2), (2, 3), (17, 1), (64, 2)):
            feeds = {"X": rng.standard_normal((S, N, I)).astype(np.float32)}
            if state:
                feeds["h0"] = rng.standard_normal((D, N, H)).astype(np.float32)
            _close(ss.run(None, feeds), ds.run(None, feeds))


GRU_CORRUPTIONS = [
    (lambda m: _edit(m, ".R_indices", _bad_offset), "is not below the length of bank"),
    (lambda m: _edit(m, ".B", lambda a: a[:, :-1]), "B has shape .*6\\*hidden_size"),
    (lambda m: _set_attr(m, "hidden_size", 9), "W_values has shape .* = 1\\*3\\*9"),
    (lambda m: _set_attr(m, "linear_before_reset", 2), "linear_before_reset"),
    (lambda m: _set_attr(m, "r_bank_size", 300), "r_bank_size' must be in \\[1, 256\\]"),
]


@pytest.mark.parametrize("corrupt,match", GRU_CORRUPTIONS)
def test_sparse_gru_rejects_corrupted_models(corrupt, match):
    rng = np.random.default_rng(5)
    _, sparse, _ = _gru_pair(rng, "forward", 8, 6, 6, 8, False, 0)
    with pytest.raises(Exception, match=match) as e:
        sparsekit.session(corrupt(sparse))
    assert "SparseGRU node 'gru'" in str(e.value)


# ------------------------------------------------------------------ validation (untrusted) --
def _edit(m, suffix, fn):
    for i, t in enumerate(m.graph.initializer):
        if t.name.endswith(suffix):
            arr = fn(numpy_helper.to_array(t).copy())
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(arr), t.name))
            return m
    raise KeyError(suffix)


def _set_attr(m, name, value):
    n = m.graph.node[0]
    for i, a in enumerate(n.attribute):
        if a.name == name:
            del n.attribute[i]
            break
    if value is not None:
        n.attribute.append(helper.make_attribute(name, value))
    return m


def _bad_offset(a):
    a[1, 0, 0] = 200
    return a


CORRUPTIONS = [
    (lambda m: _edit(m, ".R_indices", _bad_offset), "is not below the length of bank"),
    (lambda m: _edit(m, ".W_values", lambda a: a[:-1]), "W_values has shape"),
    (lambda m: _edit(m, ".R_indices", lambda a: a.astype(np.int64)), "R_indices must be uint8 or uint16"),
    (lambda m: _edit(m, ".R_values", lambda a: np.concatenate([a] * 5, axis=2)),
     "exceeds r_bank_size"),
    (lambda m: _edit(m, ".B", lambda a: a[:, :-1]), "B has shape"),
    (lambda m: _set_attr(m, "hidden_size", 9), "W_values has shape .* = 1\\*4\\*9"),
    (lambda m: _set_attr(m, "hidden_size", 0), "hidden_size"),
    (lambda m: _set_attr(m, "r_bank_size", 0), "r_bank_size"),
    (lambda m: _set_attr(m, "w_bank_size", None), "missing required attribute 'w_bank_size'"),
    (lambda m: _set_attr(m, "direction", "sideways"), "attribute 'direction'"),
    (lambda m: _set_attr(m, "direction", "bidirectional"), "has shape"),
    (lambda m: _set_attr(m, "input_size", "6"), "attribute 'input_size' must be an int"),
]


@pytest.mark.parametrize("corrupt,match", CORRUPTIONS)
def test_sparse_lstm_rejects_corrupted_models(corrupt, match):
    rng = np.random.default_rng(5)
    _, sparse, _ = _pair(rng, "forward", 8, 6, 6, 8, False)
    m = corrupt(sparse)
    with pytest.raises(Exception, match=match) as e:
        sparsekit.session(m)
    assert "SparseLSTM node 'lstm'" in str(e.value)


def test_sparse_lstm_rejects_sequence_lens_and_graph_input_weights():
    rng = np.random.default_rng(6)
    _, sparse, _ = _pair(rng, "forward", 8, 6, 6, 8, False)
    n = sparse.graph.node[0]
    n.input.extend(["", "lens"][len(n.input) - 5:])
    sparse.graph.input.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["N"]))
    with pytest.raises(Exception, match="sequence_lens"):
        sparsekit.session(sparse)
    _, sparse, _ = _pair(rng, "forward", 8, 6, 6, 8, False)
    t = next(t for t in sparse.graph.initializer if t.name.endswith(".R_values"))
    sparse.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    sparse.graph.initializer.remove(t)
    with pytest.raises(Exception, match="must be a constant initializer"):
        sparsekit.session(sparse)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pos=st.integers(0, 10**6), val=st.integers(0, 255))
def test_sparse_lstm_fuzzed_offsets(pos, val):
    """Any offset byte: either valid (session runs) or a clear creation error."""
    rng = np.random.default_rng(7)
    _, sparse, _ = _pair(rng, "forward", 8, 6, 6, 5, False)
    which = ".R_indices" if pos % 2 else ".W_indices"

    def poke(a):
        a.reshape(-1)[pos % a.size] = val
        return a
    m = _edit(sparse, which, poke)
    try:
        s = sparsekit.session(m)
    except Exception as e:
        assert "is not below the length of bank" in str(e)
        return
    y = s.run(None, {"X": np.ones((2, 1, 6), np.float32)})[0]
    assert np.isfinite(y).all()


# ------------------------------------------------------------------ SpMV kernels vs numpy --
@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 70), K=st.integers(1, 300), bs=st.integers(1, 256),
       sparsity=st.sampled_from([0.0, 0.5, 0.8, 0.95]), init=st.booleans(),
       seed=st.integers(0, 2**31))
def test_spmv_bank_matches_numpy(isa, rows, K, bs, sparsity, init, seed):
    bs = min(bs, K)
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((rows, K)).astype(np.float32)
    W *= bank_mask(W, sparsity, bank_size=bs)
    p = pack_bank_rows(W, bs)
    x = rng.standard_normal(K).astype(np.float32)
    b = rng.standard_normal(rows).astype(np.float32) if init else None
    y = _native.spmv_bank(isa, p["values"][..., 0], p["indices"], bs, K, x, b)
    want = W.astype(np.float64) @ x + (b if init else 0.0)
    scale = np.abs(W).astype(np.float64) @ np.abs(x) + 1.0
    assert np.all(np.abs(y - want) <= 1e-5 * scale)


def test_spmv_bank_rejects_bad_input():
    v = np.zeros((4, 2, 3), np.float32)
    o = np.zeros((4, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="bank_size"):
        _native.spmv_bank("ref", v, o, 300, 20, np.zeros(20, np.float32))
    o[0, 1, 0] = 9  # bank 1 of K = 12 with bank 8 has length 4
    with pytest.raises(ValueError, match="offset"):
        _native.spmv_bank("ref", v, o, 8, 12, np.zeros(12, np.float32))
    with pytest.raises(ValueError, match="x must be"):
        _native.spmv_bank("ref", v, o * 0, 8, 12, np.zeros(11, np.float32))


# ------------------------------------------------------------------ prune + convert --
def _torch_style_rnn(op, I=24, H=32, bidirectional=False, extra_attrs=None, P=False):
    """What torch.onnx.export writes for nn.LSTM / nn.GRU(batch_first=True): Transpose in, the
    node with W/R/B initializers and initial state(s) (a GRU with linear_before_reset = 1),
    Transpose/Reshape out; symbolic batch and seq."""
    lstm = op == "LSTM"
    G = 4 if lstm else 3
    rng = np.random.default_rng(11 if lstm else 12)
    D = 2 if bidirectional else 1
    W = (rng.standard_normal((D, G * H, I)) / np.sqrt(I)).astype(np.float32)
    R = (rng.standard_normal((D, G * H, H)) / np.sqrt(H)).astype(np.float32)
    B = (0.1 * rng.standard_normal((D, 2 * G * H))).astype(np.float32)
    inits = [numpy_helper.from_array(W, f"onnx::{op}_W"), numpy_helper.from_array(R, f"onnx::{op}_R"),
             numpy_helper.from_array(B, f"onnx::{op}_B"),
             numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape")]
    states = ["h0", "c0"] if lstm else ["h0"]
    node_in = ["xt", f"onnx::{op}_W", f"onnx::{op}_R", f"onnx::{op}_B", ""] + states
    if P:
        inits.append(numpy_helper.from_array(np.zeros((D, 3 * H), np.float32), "P"))
        node_in.append("P")
    outs = ["y", "hn", "cn"] if lstm else ["y", "hn"]
    attrs = dict(extra_attrs or {}) if lstm else dict(linear_before_reset=1, **(extra_attrs or {}))
    nodes = [
        helper.make_node("Transpose", ["input"], ["xt"], name="/Transpose", perm=[1, 0, 2]),
        helper.make_node(op, node_in, outs, name=f"/{op.lower()}/{op}", hidden_size=H,
                         direction="bidirectional" if bidirectional else "forward", **attrs),
        helper.make_node("Transpose", ["y"], ["yt"], name="/Transpose_1", perm=[2, 0, 1, 3]),
        helper.make_node("Reshape", ["yt", "shape"], ["output"], name="/Reshape"),
    ]
    ins = [vinfo("input", ["batch", "seq", I])] + [vinfo(n, [D, "batch", H]) for n in states]
    g = helper.make_graph(nodes, f"torch_{op.lower()}", ins,
                          [vinfo("output", None)] + [vinfo(n, None) for n in outs[1:]], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                             ir_version=IR_VERSION)


def _torch_style_lstm(**kw):
    return _torch_style_rnn("LSTM", **kw)


def _torch_style_gru(**kw):
    return _torch_style_rnn("GRU", **kw)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_prune_and_convert_torch_style_lstm(bidirectional):
    m = _torch_style_lstm(bidirectional=bidirectional)
    pruned, rep = sparsekit.prune(m, "bank", 0.8)
    names = [r.name for r in rep.layers]
    assert names == ["/lstm/LSTM/W", "/lstm/LSTM/R"]
    assert all(r.bank_size == 16 for r in rep.layers)  # LSTM_DEFAULT_BANK
    assert all(0.78 < r.achieved < 0.85 for r in rep.layers)
    meta = next(p.value for p in pruned.metadata_props if p.key == "sparsekit.recipe")
    assert "/lstm/LSTM/R" in meta
    sparse, crep = sparsekit.convert(pruned)
    ops = [n.op_type for n in sparse.graph.node]
    assert "SparseLSTM" in ops and "LSTM" not in ops, crep.layers
    row = next(l for l in crep.layers if l.op == "LSTM")
    rows = {l.name: l for l in crep.layers}
    assert rows["/lstm/LSTM/W"].format == "bank 16 1x1" == rows["/lstm/LSTM/R"].format
    assert row.decision == "sparse"
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(0)
    ds = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    ss = sparsekit.session(sparse)
    for batch, seq in ((1, 1), (3, 10), (2, 64)):
        feeds = {"input": rng.standard_normal((batch, seq, 24)).astype(np.float32),
                 "h0": rng.standard_normal((D, batch, 32)).astype(np.float32),
                 "c0": rng.standard_normal((D, batch, 32)).astype(np.float32)}
        _close(ss.run(None, feeds), ds.run(None, feeds))


@pytest.mark.parametrize("kw,reason", [
    (dict(P=True), "peepholes"),
    (dict(extra_attrs={"clip": 3.0}), "clip"),
    (dict(extra_attrs={"input_forget": 1}), "input_forget"),
    (dict(extra_attrs={"activations": ["Sigmoid", "Relu", "Tanh"]}), "activations"),
])
def test_convert_leaves_unsupported_lstms_dense(kw, reason):
    m = _torch_style_lstm(**kw)
    pruned, _ = sparsekit.prune(m, "bank", 0.8)
    sparse, crep = sparsekit.convert(pruned)
    row = next(l for l in crep.layers if l.op == "LSTM")
    assert row.decision == "dense" and reason in row.reason
    assert "LSTM" in [n.op_type for n in sparse.graph.node]


def test_convert_leaves_dense_lstm_dense():
    m = _torch_style_lstm()
    sparse, crep = sparsekit.convert(m)
    row = next(l for l in crep.layers if l.op == "LSTM")
    assert row.decision == "dense" and row.reason == "no zeros"


@pytest.mark.parametrize("bidirectional", [False, True])
def test_prune_and_convert_torch_style_gru(bidirectional):
    m = _torch_style_gru(bidirectional=bidirectional)
    pruned, rep = sparsekit.prune(m, "bank", 0.8)
    assert [r.name for r in rep.layers] == ["/gru/GRU/W", "/gru/GRU/R"]
    assert all(r.op == "GRU" and r.bank_size == 16 for r in rep.layers)
    assert all(0.78 < r.achieved < 0.85 for r in rep.layers)
    sparse, crep = sparsekit.convert(pruned)
    ops = [n.op_type for n in sparse.graph.node]
    assert "SparseGRU" in ops and "GRU" not in ops, crep.layers
    rows = {l.name: l for l in crep.layers}
    assert rows["/gru/GRU/W"].decision == "sparse" == rows["/gru/GRU/R"].decision
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(0)
    ds = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    ss = sparsekit.session(sparse)
    for batch, seq in ((1, 1), (3, 10), (2, 64)):
        feeds = {"input": rng.standard_normal((batch, seq, 24)).astype(np.float32),
                 "h0": rng.standard_normal((D, batch, 32)).astype(np.float32)}
        _close(ss.run(None, feeds), ds.run(None, feeds))


@pytest.mark.parametrize("kw,reason", [
    (dict(extra_attrs={"clip": 3.0}), "clip"),
    (dict(extra_attrs={"activations": ["Sigmoid", "Relu"]}), "activations"),
])
def test_convert_leaves_unsupported_grus_dense(kw, reason):
    pruned, _ = sparsekit.prune(_torch_style_gru(**kw), "bank", 0.8)
    sparse, crep = sparsekit.convert(pruned)
    row = next(l for l in crep.layers if l.op == "GRU")
    assert row.decision == "dense" and reason in row.reason
    assert "GRU" in [n.op_type for n in sparse.graph.node]


def test_prune_skips_gru_weights_for_non_bank_patterns():
    with pytest.raises(sparsekit.SparsekitError, match="GRU weights are pruned with pattern "
                                                       "'bank' only"):
        sparsekit.prune(_torch_style_gru(), "block", 0.8)


def test_zoo_lstm_lm_converts_to_sparse_lstm():
    from sparsekit.models import lstm_lm
    m = lstm_lm.build(hidden=64, vocab=300, seq=12, layers=2, with_state=True)
    pruned, rep = sparsekit.prune(m, "bank", 0.85)
    assert {r.name for r in rep.layers} >= {"rnn.0/W", "rnn.0/R", "rnn.1/W", "rnn.1/R"}
    sparse, crep = sparsekit.convert(pruned)
    assert [n.op_type for n in sparse.graph.node].count("SparseLSTM") == 2
    from sparsekit.bench import max_relative_difference
    from sparsekit.sessions import make_inputs
    assert max_relative_difference(pruned, sparse, make_inputs(pruned)) < 1e-4


# ------------------------------------------------------------------ transformer (MatMul) --
def test_bert_layer_symbolic_seq_converts_weight_matmuls_only():
    """PyTorch-exported encoder layer: the 6 weight MatMuls (+ Add bias) become SparseGemm with
    batch and symbolic sequence dims; the two attention MatMuls between activations stay."""
    from sparsekit.models import bert_layer
    m = bert_layer.build(seq=16, hidden=64, heads=4, ffn=256, symbolic_seq=True)
    pruned, rep = sparsekit.prune(m, "bank", 0.8)
    assert len(rep.layers) == 6
    sparse, crep = sparsekit.convert(pruned)
    ops = [n.op_type for n in sparse.graph.node]
    assert ops.count("SparseGemm") == 6 and ops.count("MatMul") == 2, crep.layers
    ds = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    for threads in (1, 2):
        ss = sparsekit.session(sparse, threads=threads)
        for seq in (1, 7, 128):
            x = np.random.default_rng(seq).standard_normal((1, seq, 64)).astype(np.float32)
            got, want = ss.run(None, {"hidden_states": x})[0], ds.run(None, {"hidden_states": x})[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ issue 21: hardening --
def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _numpy_rnn(kind, W, R, B, X, h0, c0=None, direction="forward", lbr=0):
    """ONNX LSTM / GRU (default activations) in float64, where no gate sum can overflow."""
    D, H = R.shape[0], R.shape[2]
    W, R, B, X = (a.astype(np.float64) for a in (W, R, B, X))
    S, N = X.shape[:2]
    Y = np.zeros((S, D, N, H))
    Yh, Yc = np.zeros((D, N, H)), np.zeros((D, N, H))
    for d in range(D):
        rev = direction == "reverse" or d == 1
        h = h0[d].astype(np.float64)
        c = c0[d].astype(np.float64) if c0 is not None else np.zeros((N, H))
        G = R.shape[1] // H
        Wb, Rb = B[d, :G * H], B[d, G * H:]
        for t in (range(S - 1, -1, -1) if rev else range(S)):
            xw = X[t] @ W[d].T + Wb
            if kind == "lstm":
                g = xw + h @ R[d].T + Rb
                i, o, f = _sigmoid(g[:, :H]), _sigmoid(g[:, H:2 * H]), _sigmoid(g[:, 2 * H:3 * H])
                c = f * c + i * np.tanh(g[:, 3 * H:])
                h = o * np.tanh(c)
            else:
                zr = xw[:, :2 * H] + h @ R[d, :2 * H].T + Rb[:2 * H]
                z, r = _sigmoid(zr[:, :H]), _sigmoid(zr[:, H:])
                if lbr:
                    hh = np.tanh(xw[:, 2 * H:] + r * (h @ R[d, 2 * H:].T + Rb[2 * H:]))
                else:
                    hh = np.tanh(xw[:, 2 * H:] + (r * h) @ R[d, 2 * H:].T + Rb[2 * H:])
                h = (1 - z) * hh + z * h
            Y[t, d] = h
        Yh[d], Yc[d] = h, c
    return [Y, Yh, Yc] if kind == "lstm" else [Y, Yh]


def _rnn_initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind,lbr", [("lstm", 0), ("gru", 0), ("gru", 1)])
@pytest.mark.parametrize("pattern", ["+", "-", "sign", "sign-and-normal"])
def test_extreme_finite_inputs_saturate_like_the_reference(monkeypatch, isa, kind, lbr, pattern):
    """Inputs of +-3e38 overflow the gates' float sums (inf, inf - inf = NaN, in an order that
    differs per ISA): every ISA gives the finite, saturated values of the exact (float64)
    computation, equal to SPARSEKIT_ISA=ref, and finite like stock onnxruntime."""
    rng = np.random.default_rng(21)
    H, I = 40, 16
    if kind == "lstm":
        dense, sparse, D = _pair(rng, "bidirectional", H, I, 16, 8, True)
    else:
        dense, sparse, D = _gru_pair(rng, "bidirectional", H, I, 16, 8, True, lbr)
    S, N = 8, 2
    big = np.float32(3e38)
    X = {"+": np.full((S, N, I), big), "-": np.full((S, N, I), -big),
         "sign": rng.choice([-big, big], (S, N, I)),
         "sign-and-normal": np.where(rng.random((S, N, I)) < 0.5, rng.choice([-big, big], (S, N, I)),
                                     rng.standard_normal((S, N, I)))}[pattern].astype(np.float32)
    feeds = {"X": X, "h0": rng.choice([-big, big, 0.5], (D, N, H)).astype(np.float32)}
    if kind == "lstm":
        feeds["c0"] = rng.standard_normal((D, N, H)).astype(np.float32)
    inits = _rnn_initializers(dense)
    want = _numpy_rnn(kind, inits["W"], inits["R"], inits["B"], feeds["X"], feeds["h0"],
                      feeds.get("c0"), "bidirectional", lbr)
    stock = ort.InferenceSession(dense.SerializeToString(),
                                 providers=["CPUExecutionProvider"]).run(None, feeds)
    monkeypatch.setenv("SPARSEKIT_ISA", "ref")
    ref = sparsekit.session(sparse).run(None, feeds)
    monkeypatch.setenv("SPARSEKIT_ISA", isa)
    got = sparsekit.session(sparse, threads=2).run(None, feeds)
    for g, r, w, s in zip(got, ref, want, stock):
        assert np.isfinite(s).all() and np.isfinite(g).all()
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-5)  # h_0 of 3e38 carries on in GRU
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_nan_input_propagates_and_inf_saturates(kind):
    rng = np.random.default_rng(22)
    if kind == "lstm":
        _, sparse, D = _pair(rng, "forward", 8, 6, 6, 8, False)
    else:
        _, sparse, D = _gru_pair(rng, "forward", 8, 6, 6, 8, False, 0)
    ss = sparsekit.session(sparse)
    x = rng.standard_normal((3, 2, 6)).astype(np.float32)
    x[1, 0, 2] = np.nan
    y = ss.run(None, {"X": x})[0]
    assert np.isnan(y[1:, :, 0]).any() and np.isfinite(y[0]).all() and np.isfinite(y[:, :, 1]).all()
    y = ss.run(None, {"X": np.full((3, 2, 6), np.inf, np.float32)})[0]
    assert not np.isinf(y).any()


UNIMPLEMENTED = [
    ("activations", ["Sigmoid", "Tanh", "Tanh"]),
    ("activation_alpha", [1.0]),
    ("activation_beta", [0.5]),
    ("clip", 3.0),
    ("input_forget", 1),
    ("layout", 1),
    ("activation", "relu"),
    ("transA", 1),
]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("name,value", UNIMPLEMENTED)
def test_unimplemented_attributes_fail_creation(kind, name, value):
    rng = np.random.default_rng(23)
    if kind == "lstm":
        _, sparse, _ = _pair(rng, "forward", 8, 6, 6, 8, False)
    else:
        _, sparse, _ = _gru_pair(rng, "forward", 8, 6, 6, 8, False, 0)
    sparsekit.session(_set_attr(sparse, "layout", 0))  # stock defaults are accepted
    sparsekit.session(_set_attr(sparse, "input_forget", 0))
    with pytest.raises(Exception, match=f"attribute '{name}' is not implemented") as e:
        sparsekit.session(_set_attr(sparse, name, value))
    assert f"Sparse{kind.upper()} node '{kind}'" in str(e.value)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("tensor", [".W_values", ".R_values", ".B"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_fail_creation(kind, tensor, bad):
    rng = np.random.default_rng(24)
    if kind == "lstm":
        _, sparse, _ = _pair(rng, "forward", 8, 6, 6, 8, False)
    else:
        _, sparse, _ = _gru_pair(rng, "forward", 8, 6, 6, 8, False, 0)

    def poke(a):
        a.reshape(-1)[3] = bad
        return a
    with pytest.raises(Exception, match=r"has a non-finite value .*finite weights") as e:
        sparsekit.session(_edit(sparse, tensor, poke))
    assert f"node '{kind}'" in str(e.value) and tensor.lstrip(".") in str(e.value)


def test_oversized_recurrent_output_fails_at_run_and_session_stays_usable():
    """A few-KB SparseLSTM (hidden 2^16, R empty) asked for more than 2^31 elements: a clear
    run error naming the node before anything is allocated; the next run works."""
    H = 1 << 16
    inits = [numpy_helper.from_array(np.ones((4 * H, 1, 1, 1), np.float32), "W_values"),
             numpy_helper.from_array(np.zeros((4 * H, 1, 1), np.uint8), "W_indices"),
             numpy_helper.from_array(np.zeros((4 * H, H // 256, 0, 1), np.float32), "R_values"),
             numpy_helper.from_array(np.zeros((4 * H, H // 256, 0), np.uint8), "R_indices")]
    node = helper.make_node("SparseLSTM", ["X", "W_values", "W_indices", "R_values", "R_indices"],
                            ["Y", "Y_h", "Y_c"], name="lstm", domain="ai.sparsekit", hidden_size=H,
                            input_size=1, w_bank_size=1, r_bank_size=256)
    ss = sparsekit.session(_model([node], inits, [vinfo("X", ["S", "N", 1])]))
    with pytest.raises(Exception, match=r"SparseLSTM node 'lstm': the input projection .* "
                                        r"elements, more than the 2\^31"):
        ss.run(None, {"X": np.zeros(((1 << 13) + 1, 1, 1), np.float32)})  # X*W^T: 2^31 + 2^18
    y, yh, yc = ss.run(None, {"X": np.ones((2, 1, 1), np.float32)})
    i, o, f, c = _sigmoid(1.0), _sigmoid(1.0), _sigmoid(1.0), np.tanh(1.0)
    c1 = i * c
    c2 = f * c1 + i * c
    assert y.shape == (2, 1, 1, H)
    np.testing.assert_allclose(yc, np.full((1, 1, H), c2), rtol=1e-5)
    np.testing.assert_allclose(yh, o * np.tanh(yc), rtol=1e-5)
