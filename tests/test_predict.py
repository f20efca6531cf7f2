"""PredictedConv (docs/predict.md): the ReLU-output prediction against a numpy model of the same
integer arithmetic, full precision wherever an output is predicted positive, exactness when the
prediction is exact, every ISA's kernel, and validation of untrusted input."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import sparsekit
from ort_helpers import run_stock
from sparsekit.format import opset_import
from sparsekit.predict import (MarginStats, Pool, make_predicted_conv_node, margin_for_recall,
                               pooled_candidates, pooled_output, predicted_mask, quantize_rows)

def _models(W, b, xshape, strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), act="relu", hi=6.0,
            bits=8, margin=0, pool=None):
    """(PredictedConv model, dense Conv + activation [+ MaxPool] model)."""
    node, inits = make_predicted_conv_node("pc", "X", "Y", W, b, strides=strides, pads=pads,
                                           dilations=dil, activation=act,
                                           clip_max=hi if act == "clip" else None, bits=bits,
                                           margin=margin, pool=pool)
    X = helper.make_tensor_value_info("X", TensorProto.FLOAT, list(xshape))
    Y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    sparse = helper.make_model(helper.make_graph([node], "g", [X], [Y], inits),
                               opset_imports=[helper.make_opsetid("", 17), opset_import()],
                               ir_version=9)
    conv = helper.make_node("Conv", ["X", "W", "B"], ["C0"], strides=list(strides),
                            pads=list(pads), dilations=list(dil))
    a_out = "A0" if pool else "Y"
    actn = helper.make_node("Relu", ["C0"], [a_out]) if act == "relu" else \
        helper.make_node("Clip", ["C0", "lo", "hi"], [a_out])
    cinits = [numpy_helper.from_array(np.asarray(W, np.float32), "W"),
              numpy_helper.from_array(np.asarray(b, np.float32), "B"),
              numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
              numpy_helper.from_array(np.array(hi, np.float32), "hi")]
    nodes = [conv, actn]
    if pool:
        nodes.append(helper.make_node("MaxPool", ["A0"], ["Y"], kernel_shape=list(pool.kernel),
                                      strides=list(pool.strides), pads=list(pool.pads)))
    dense = helper.make_model(helper.make_graph(nodes, "g", [X], [Y], cinits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return sparse, dense


CASES = {
    # name: (N, C, H, W, M, kh, kw, strides, pads, dilations)
    "3x3-pad": (2, 16, 13, 11, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "1x1": (1, 32, 9, 9, 19, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    "3x3-s2": (1, 8, 17, 16, 13, 3, 3, (2, 2), (1, 0, 1, 1), (1, 1)),
    "5x5-dil2": (1, 5, 15, 14, 7, 5, 5, (1, 1), (2, 2, 2, 2), (2, 2)),
    "k-not-4": (3, 3, 10, 10, 9, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),   # K = 27
    # K4 = 9 * 132 = 1188: the AVX2 kernel's K chunks (256 steps of 4) and M = 2 blocks + 3
    "wide": (1, 130, 6, 7, 19, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
}


# (bits, margin): 8-bit weights widen every step, 4-bit ones after 18 steps of int16 sums,
# 6-bit ones after 4; a margin computes more outputs
VARIANTS = {"int8": (8, 0), "int4": (4, 0), "int6-margin": (6, 40), "int4-margin": (4, 7)}


# every geometry with int8 weights, signed or not, relu or clip; the other weight widths and
# margins on non-negative inputs with relu (the sign and activation paths do not depend on them)
PREDICT_PARAMS = [(c, sg, a, "int8") for c in CASES for sg in (False, True)
                  for a in ("relu", "clip")] + [(c, False, "relu", v) for c in CASES
                                                for v in VARIANTS if v != "int8"]


@pytest.mark.parametrize("case, signed, act, variant", PREDICT_PARAMS)
def test_computes_exactly_where_predicted_positive(isa, case, signed, act, variant):
    N, C, H, Wd, M, kh, kw, st, pd, dl = CASES[case]
    bits, margin = VARIANTS[variant]
    rng = np.random.default_rng(len(case) + 7 * signed)
    W = (rng.standard_normal((M, C, kh, kw)) / np.sqrt(C * kh * kw)).astype(np.float32)
    b = (0.1 * rng.standard_normal(M)).astype(np.float32)
    x = rng.standard_normal((N, C, H, Wd)).astype(np.float32)
    if not signed:
        x = np.maximum(x, 0)          # a ReLU's output: no zero point
    sparse, dense = _models(W, b, x.shape, st, pd, dl, act, bits=bits, margin=margin)
    computed = predicted_mask(W, b, x, st, pd, dl, bits=bits, margin=margin)
    if margin:
        assert computed.sum() >= predicted_mask(W, b, x, st, pd, dl, bits=bits).sum()
    for threads in (1, 2):
        y = sparsekit.session(sparse, threads=threads).run(None, {"X": x})[0]
        want = run_stock(dense, {"X": x})
        scale = max(1e-3, float(np.abs(want).max()))
        np.testing.assert_allclose(y[computed], want[computed], rtol=1e-4, atol=1e-5 * scale)
        assert (y[~computed] == 0).all()
        # the prediction is good: it loses few outputs (recall targets: the margin test)
        pos = want > 0
        assert (computed & pos).sum() >= (0.95 if bits == 8 else 0.85) * pos.sum()


@pytest.mark.parametrize("bits", [4, 8])
def test_margin_for_recall_keeps_that_recall(isa, bits):
    """The margin chosen on data (numpy model of the prediction) gives the op that recall on
    the same data, and no more work than needed: one unit less misses the target."""
    rng = np.random.default_rng(11)
    M, C = 24, 16
    W = (rng.standard_normal((M, C, 3, 3)) / 12).astype(np.float32)
    b = (0.05 * rng.standard_normal(M) - 0.2).astype(np.float32)
    x = np.maximum(rng.standard_normal((2, C, 12, 12)), 0).astype(np.float32)
    _, dense = _models(W, b, x.shape, pads=(1, 1, 1, 1))
    want = run_stock(dense, {"X": x})
    pos = want > 0
    for target in (0.99, 0.999):
        u = margin_for_recall(W, b, x, want, target, pads=(1, 1, 1, 1), bits=bits)
        sparse, _ = _models(W, b, x.shape, pads=(1, 1, 1, 1), bits=bits, margin=u)
        y = sparsekit.session(sparse).run(None, {"X": x})[0]
        assert ((y > 0) & pos).sum() >= target * pos.sum()
        if u > 0:
            fewer = predicted_mask(W, b, x, pads=(1, 1, 1, 1), bits=bits, margin=u - 1)
            assert (fewer & pos).sum() < target * pos.sum()


def test_exact_when_the_prediction_is_exact(isa):
    """Weights on the int8 grid and activations on the 7-bit grid: the prediction is the
    convolution itself, so the op equals dense Conv + ReLU everywhere."""
    rng = np.random.default_rng(3)
    M, C = 12, 8
    W = rng.integers(-127, 128, (M, C, 3, 3)).astype(np.float32)
    W[:, 0, 0, 0] = 127                       # every row's max |w| is 127: scale exactly 1
    W *= np.float32(0.5)
    b = (rng.integers(-50, 50, M) + 0.25).astype(np.float32)   # never ties with a grid value
    x = rng.integers(0, 128, (1, C, 10, 10)).astype(np.float32)
    x[0, 0, 0, 0] = 127                       # max 127: 7-bit scale exactly 1, no rounding
    sparse, dense = _models(W, b, x.shape, pads=(1, 1, 1, 1))
    y = sparsekit.session(sparse).run(None, {"X": x})[0]
    want = run_stock(dense, {"X": x})
    np.testing.assert_allclose(y, want, rtol=1e-6)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_rows(bits):
    W = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 127.0, -127.0]], np.float32)
    q, s = quantize_rows(W, bits)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == np.int8 and s.dtype == np.float32
    assert np.abs(q).max() == qmax and (q != -128).all()
    assert (np.abs(q * s[:, None] - W) <= s[:, None] / 2 + 1e-6).all()
    assert s[1] == 0 and (q[1] == 0).all()
    with pytest.raises(sparsekit.SparsekitError, match="bits"):
        quantize_rows(W, 9)


POOLS = {
    # name: (conv case, pool, weight bits, margin)
    "3x3s2p1": ("3x3-pad", Pool((3, 3), (2, 2), (1, 1, 1, 1)), 8, 0),
    "2x2s2": ("1x1", Pool((2, 2), (2, 2), (0, 0, 0, 0)), 4, 0),
    "3x3s1-margin": ("k-not-4", Pool((3, 3), (1, 1), (1, 0, 1, 0)), 4, 25),
    "2x3-strided-conv": ("3x3-s2", Pool((2, 3), (1, 2), (0, 1, 1, 2)), 8, 3),
}


@pytest.mark.parametrize("act", ["relu", "clip"])
@pytest.mark.parametrize("pcase", list(POOLS))
def test_max_pool_chain_pools_the_computed_candidates(isa, pcase, act):
    """Conv -> activation -> MaxPool in one PredictedConv: per window the largest of the outputs
    computed in full precision (the numpy model's candidates: a window's largest prediction
    within the margin, predicted positive), 0 where none was; the values themselves come from
    stock onnxruntime's Conv + activation."""
    case, pool, bits, margin = POOLS[pcase]
    N, C, H, Wd, M, kh, kw, st, pd, dl = CASES[case]
    rng = np.random.default_rng(len(pcase))
    W = (rng.standard_normal((M, C, kh, kw)) / np.sqrt(C * kh * kw)).astype(np.float32)
    b = (0.1 * rng.standard_normal(M)).astype(np.float32)
    x = np.maximum(rng.standard_normal((N, C, H, Wd)), 0).astype(np.float32)
    sparse, dense = _models(W, b, x.shape, st, pd, dl, act, bits=bits, margin=margin, pool=pool)
    _, act_only = _models(W, b, x.shape, st, pd, dl, act)
    y_act = run_stock(act_only, {"X": x})
    _, cand = pooled_candidates(W, b, x, pool, st, pd, dl, bits=bits, margin=margin)
    want = pooled_output(y_act, cand, pool)
    truth = run_stock(dense, {"X": x})
    assert want.shape == truth.shape
    for threads in (1, 2):
        y = sparsekit.session(sparse, threads=threads).run(None, {"X": x})[0]
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5 * float(np.abs(truth).max()))
    # the candidates are a small part of the outputs, and most windows come out exact
    assert cand.mean() < 0.6
    assert np.isclose(y, truth, rtol=1e-4, atol=1e-6).mean() >= 0.9


def test_max_pool_chain_exact_when_the_prediction_is_exact(isa):
    rng = np.random.default_rng(8)
    M, C = 10, 6
    W = rng.integers(-127, 128, (M, C, 3, 3)).astype(np.float32)
    W[:, 0, 0, 0] = 127
    b = (rng.integers(-50, 50, M) + 0.25).astype(np.float32)
    x = rng.integers(0, 128, (2, C, 9, 11)).astype(np.float32)
    x[:, 0, 0, 0] = 127
    pool = Pool((3, 3), (2, 2), (1, 1, 1, 1))
    sparse, dense = _models(W, b, x.shape, pads=(1, 1, 1, 1), pool=pool)
    y = sparsekit.session(sparse).run(None, {"X": x})[0]
    np.testing.assert_allclose(y, run_stock(dense, {"X": x}), rtol=1e-6)


@pytest.mark.parametrize("bits", [4, 8])
def test_pooled_margin_for_recall_makes_windows_exact(isa, bits):
    """With a MaxPool the recall is over windows with a positive maximum: the margin chosen on
    data makes at least that fraction of them come out exact."""
    rng = np.random.default_rng(12)
    M, C = 16, 12
    W = (rng.standard_normal((M, C, 3, 3)) / 10).astype(np.float32)
    b = (0.05 * rng.standard_normal(M)).astype(np.float32)
    x = np.maximum(rng.standard_normal((2, C, 16, 16)), 0).astype(np.float32)
    pool = Pool((3, 3), (2, 2), (1, 1, 1, 1))
    _, act_only = _models(W, b, x.shape, pads=(1, 1, 1, 1))
    y_act = run_stock(act_only, {"X": x})
    st = MarginStats(W, b, (1, 1), (1, 1, 1, 1), (1, 1), bits, pool)
    st.add(x, y_act)
    for target in (0.99, 0.999):
        u = st.margin(target)
        sparse, dense = _models(W, b, x.shape, pads=(1, 1, 1, 1), bits=bits, margin=u, pool=pool)
        y = sparsekit.session(sparse).run(None, {"X": x})[0]
        truth = run_stock(dense, {"X": x})
        pos = truth > 0
        assert (np.isclose(y, truth, rtol=1e-5, atol=1e-6) & pos).sum() >= target * pos.sum()
        _, cand = pooled_candidates(W, b, x, pool, pads=(1, 1, 1, 1), bits=bits, margin=u)
        assert abs(cand.mean() - st.computed(u)) < 1e-9


def test_rewrite_fuses_max_pool_only_when_it_can():
    from sparsekit.predict import rewrite_predicted
    rng = np.random.default_rng(13)
    W = (rng.standard_normal((8, 4, 3, 3)) / 6).astype(np.float32)
    b = np.zeros(8, np.float32)
    x = np.maximum(rng.standard_normal((1, 4, 12, 12)), 0).astype(np.float32)
    _, dense = _models(W, b, x.shape, pads=(1, 1, 1, 1), pool=Pool((2, 2), (2, 2), (0,) * 4))
    pm, rows = rewrite_predicted(dense)
    (node,) = [n for n in pm.graph.node]
    assert node.op_type == "PredictedConv" and rows[0].pool == Pool((2, 2), (2, 2), (0,) * 4)
    assert {a.name for a in node.attribute} >= {"pool_kernel", "pool_strides", "pool_pads"}
    y = sparsekit.session(pm).run(None, {"X": x})[0]
    assert y.shape == run_stock(dense, {"X": x}).shape
    # ceil_mode 1 (or a second output, or dilations) stays a MaxPool after the PredictedConv
    mp = dense.graph.node[-1]
    mp.attribute.append(helper.make_attribute("ceil_mode", 1))
    pm, rows = rewrite_predicted(dense)
    assert [n.op_type for n in pm.graph.node] == ["PredictedConv", "MaxPool"]
    assert rows[0].pool is None
    np.testing.assert_allclose(sparsekit.session(pm).run(None, {"X": x})[0].shape,
                               run_stock(dense, {"X": x}).shape)
    # pool=False keeps every MaxPool
    pm, _ = rewrite_predicted(_models(W, b, x.shape, pads=(1, 1, 1, 1),
                                      pool=Pool((2, 2), (2, 2), (0,) * 4))[1], pool=False)
    assert [n.op_type for n in pm.graph.node] == ["PredictedConv", "MaxPool"]


@pytest.mark.parametrize("attrs,match", [
    ({"pool_kernel": [2, 2], "pool_pads": [0, 2, 0, 0]}, "pool_pads"),
    ({"pool_strides": [2, 2]}, "need 'pool_kernel'"),
    ({"pool_kernel": [0, 2]}, "pool_kernel"),
])
def test_rejects_bad_pool_attributes(attrs, match):
    W = np.ones((6, 4, 3, 3), np.float32)
    sparse, _ = _models(W, np.zeros(6, np.float32), (1, 4, 8, 8))
    sparse.graph.node[0].attribute.extend([helper.make_attribute(k, v) for k, v in attrs.items()])
    with pytest.raises(Exception, match=match):
        sparsekit.session(sparse)


def _edit(model, suffix, fn):
    for i, t in enumerate(model.graph.initializer):
        if t.name.endswith(suffix):
            arr = fn(numpy_helper.to_array(t).copy())
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, t.name))
            return model
    raise KeyError(suffix)


def _minus128(a):
    a[0, 0] = -128
    return a


@pytest.mark.parametrize("corrupt,match", [
    (lambda m: _edit(m, ".W_q", lambda a: a[:, :-1]), "W_q has shape"),
    (lambda m: _edit(m, ".W_q", _minus128), "-128"),
    # onnxruntime checks the declared input type itself, naming the node
    (lambda m: _edit(m, ".W_q", lambda a: a.astype(np.int32)), "tensor\\(int32\\).*pc.W_q"),
    (lambda m: _edit(m, ".W_q_scale", lambda a: -a - 1), "W_q_scale\\[0\\]"),
    (lambda m: _edit(m, ".W_q_scale", lambda a: a[:-1]), "W_q_scale has shape"),
    (lambda m: _edit(m, ".B", lambda a: a[:-1]), "bias has shape"),
])
def test_rejects_corrupted_models(corrupt, match):
    rng = np.random.default_rng(4)
    W = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    sparse, _ = _models(W, np.zeros(6, np.float32), (1, 4, 8, 8))
    with pytest.raises(Exception, match=match) as e:
        sparsekit.session(corrupt(sparse))
    assert "PredictedConv" in str(e.value) and "pc" in str(e.value)


def test_rejects_activation_that_keeps_negatives():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((6, 4, 1, 1)).astype(np.float32)
    sparse, _ = _models(W, np.zeros(6, np.float32), (1, 4, 8, 8))
    n = sparse.graph.node[0]
    for a in n.attribute:
        if a.name == "activation":
            a.s = b"none"
    with pytest.raises(Exception, match="must be \"relu\" or \"clip\" with clip_min = 0"):
        sparsekit.session(sparse)


def test_non_finite_input_is_a_clear_run_error():
    rng = np.random.default_rng(6)
    W = rng.standard_normal((6, 4, 1, 1)).astype(np.float32)
    sparse, _ = _models(W, np.zeros(6, np.float32), (1, 4, 8, 8))
    s = sparsekit.session(sparse)
    x = np.ones((1, 4, 8, 8), np.float32)
    x[0, 1, 2, 3] = np.nan
    with pytest.raises(Exception, match="non-finite"):
        s.run(None, {"X": x})
    assert s.run(None, {"X": np.ones((1, 4, 8, 8), np.float32)})[0].shape == (1, 6, 8, 8)


def test_rewrite_predicted_replaces_conv_relu_chains():
    """Conv -> BatchNormalization -> ReLU and Conv -> Clip(0, 6) become PredictedConv; a Conv
    without activation and a grouped Conv stay; the input model is not modified; outputs stay
    close to the original's (a mispredicted small positive output is lost and propagates)."""
    from sparsekit.predict import rewrite_predicted
    rng = np.random.default_rng(8)
    W1 = (0.3 * rng.standard_normal((8, 3, 3, 3))).astype(np.float32)
    W2 = (0.3 * rng.standard_normal((8, 8, 1, 1))).astype(np.float32)
    W3 = (0.3 * rng.standard_normal((8, 1, 3, 3))).astype(np.float32)
    W4 = (0.3 * rng.standard_normal((4, 8, 1, 1))).astype(np.float32)
    bn = [numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), n)
          for n in ("g", "beta", "mean", "var")]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["b1"]),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="c2"),
        helper.make_node("Clip", ["c2", "zero", "six"], ["r2"]),
        helper.make_node("Conv", ["r2", "W3"], ["c3"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("Conv", ["r3", "W4"], ["y"], name="proj"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (W2, "W2"), (W3, "W3"),
                                                        (W4, "W4"))] + bn + [
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])
    Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(helper.make_graph(nodes, "g", [X], [Y], inits),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    before = m.SerializeToString()
    pm, rows = rewrite_predicted(m)
    assert m.SerializeToString() == before
    got = {r.name: (r.replaced, r.reason) for r in rows}
    assert got["c1"] == (True, "batchnorm+relu") and got["c2"] == (True, "clip")
    assert not got["dw"][0] and "grouped" in got["dw"][1]
    assert not got["proj"][0] and "not followed by ReLU" in got["proj"][1]
    ops = [n.op_type for n in pm.graph.node]
    assert ops.count("PredictedConv") == 2 and "BatchNormalization" not in ops
    x = rng.standard_normal((1, 3, 9, 9)).astype(np.float32)
    want = run_stock(m, {"x": x})
    y = sparsekit.session(pm).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, want, rtol=0.05, atol=0.05 * float(np.abs(want).max()))


def _digits():
    import onnx

    from sparsekit.models import digits
    from pathlib import Path
    root = Path(__file__).parent / "data"
    d = digits.load_data(root / "digits.npz")
    return onnx.load(str(root / "digits_cnn.onnx")), d


def test_plan_predicted_follows_measured_zeros():
    """A trained CNN on real digits: the outputs each layer's result does not need (zeros after
    ReLU; after conv2's ReLU -> MaxPool 2x2 also every output that is not its window's max),
    counted here with stock onnxruntime, decide which layers become PredictedConv."""
    from onnx import helper as h

    from sparsekit.calibration import Calibration
    from sparsekit.predict import plan_predicted
    m, d = _digits()
    x = d["train_x"][:96]
    name = m.graph.input[0].name
    cal = Calibration({name: x}, 32)
    probe = onnx_copy(m)
    relus = [n.output[0] for n in m.graph.node if n.op_type == "Relu"][:3]
    probe.graph.output.extend([h.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in relus])
    outs = ort.InferenceSession(probe.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(relus, {name: x})
    zeros = [float((o == 0).mean()) for o in outs]
    # conv2 -> relu2 -> MaxPool 2x2 stride 2 (8x8 -> 4x4): per window, only a positive max
    r2 = outs[1]
    N, M, H, W = r2.shape
    win = r2.reshape(N, M, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(
        N, M, H // 2, W // 2, 4)
    top = (win == win.max(-1, keepdims=True)) & (win > 0)
    zeros[1] = 1 - float(top.sum()) / r2.size
    cut = sorted(zeros)[1]           # the middle layer's value: it and the larger one qualify
    pm, rows = plan_predicted(m, cal, min_zeros=cut)
    got = {r.activation_output: r for r in rows if r.activation}
    for t, z in zip(relus, zeros):
        assert abs(got[t].zeros - z) < 1e-9
        assert got[t].replaced == (z >= cut)
        assert got[t].recall >= 0.999 if got[t].replaced else got[t].recall is None
    assert got[relus[1]].pool is not None and got[relus[1]].output == "pool_output"
    assert [n.op_type for n in pm.graph.node].count("PredictedConv") == 2
    y = sparsekit.session(pm).run(None, {name: d["test_x"]})[0]
    want = run_stock(m, {name: d["test_x"]})
    assert (y.argmax(1) == want.argmax(1)).mean() >= 0.99
    # nothing qualifies above 100%; bad thresholds are errors
    pm, rows = plan_predicted(m, cal, min_zeros=1.0)
    assert not any(r.replaced for r in rows) and "PredictedConv" not in str(pm.graph)
    with pytest.raises(sparsekit.SparsekitError, match="min_zeros"):
        plan_predicted(m, cal, min_zeros=1.5)
    with pytest.raises(sparsekit.SparsekitError, match="recall"):
        plan_predicted(m, cal, recall=0.0)


def test_convert_api_takes_the_predict_relu_options():
    """convert(predict_relu=True, ...) is the sparse conversion followed by plan_predicted with
    the same options: the same model and rows; without calibration data it is an error."""
    from sparsekit.calibration import Calibration
    from sparsekit.predict import plan_predicted
    m, d = _digits()
    name = m.graph.input[0].name
    cal = Calibration({name: d["train_x"][:64]}, 32)
    pruned, _ = sparsekit.prune(m, "block", 0.5)
    converted, report = sparsekit.convert(pruned, predict_relu=True, calibration=cal,
                                          min_zeros=0.3, recall=0.99, predict_bits=4)
    want, rows = plan_predicted(sparsekit.convert(pruned)[0], cal, min_zeros=0.3, recall=0.99,
                                bits=4)
    assert converted.SerializeToString() == want.SerializeToString()
    assert [r.to_dict() for r in report.predicted] == [r.to_dict() for r in rows if r.activation]
    assert any(r.replaced for r in report.predicted)
    assert "predicted" in report.to_dict() and "predicted" not in sparsekit.convert(pruned)[1].to_dict()
    y = sparsekit.session(converted).run(None, {name: d["test_x"]})[0]
    ref = run_stock(pruned, {name: d["test_x"]})        # the pruned model, dense in onnxruntime
    assert (y.argmax(1) == ref.argmax(1)).mean() >= 0.95
    with pytest.raises(sparsekit.SparsekitError, match="calibration"):
        sparsekit.convert(pruned, predict_relu=True)


def onnx_copy(m):
    import onnx
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


def test_cli_convert_predict_relu(tmp_path, capsys):
    import json

    import onnx

    from sparsekit.cli import main
    m, d = _digits()
    src = tmp_path / "m.onnx"
    onnx.save(m, str(src))
    cal = tmp_path / "cal.npz"
    np.savez(cal, **{m.graph.input[0].name: d["train_x"][:64]})
    out = tmp_path / "p.onnx"
    code = main(["convert", str(src), "-o", str(out), "--predict-relu", "--calibration",
                 str(cal), "--min-zeros", "0.3", "--recall", "0.995", "--predict-bits", "6",
                 "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0
    assert len(rep["predicted"]) == 3 and all(p["replaced"] for p in rep["predicted"])
    assert all(p["recall"] >= 0.995 and 0 < p["computed"] < 1 for p in rep["predicted"])
    nodes = [n for n in onnx.load(str(out)).graph.node if n.op_type == "PredictedConv"]
    assert len(nodes) == 3
    margins = {p["node"]: p["margin"] for p in rep["predicted"]}
    for n in nodes:   # the margins the report states are the ones written; 6-bit weights
        attrs = {a.name: a.i for a in n.attribute if a.name == "margin"}
        assert attrs.get("margin", 0) == margins[n.name]
        wq = next(t for t in onnx.load(str(out)).graph.initializer if t.name == n.input[3])
        assert np.abs(numpy_helper.to_array(wq)).max() == 31
    for args, msg in [(["--predict-relu"], "--predict-relu needs --calibration"),
                      (["--min-zeros", "0.5"], "are for --predict-relu"),
                      (["--recall", "0.9"], "are for --predict-relu")]:
        code = main(["convert", str(src), "-o", str(tmp_path / "q.onnx")] + args)
        assert code != 0 and msg in capsys.readouterr().err
        assert not (tmp_path / "q.onnx").exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st_=st.lists(st.integers(-1, 4), min_size=2, max_size=2),
       pads=st.lists(st.integers(-1, 6), min_size=4, max_size=4),
       dil=st.lists(st.integers(-1, 4), min_size=2, max_size=2),
       pool=st.one_of(st.none(), st.tuples(st.lists(st.integers(0, 4), min_size=2, max_size=2),
                                           st.lists(st.integers(0, 3), min_size=2, max_size=2),
                                           st.lists(st.integers(-1, 3), min_size=4,
                                                    max_size=4))),
       hw=st.integers(1, 9))
def test_crafted_geometry_fails_cleanly_or_matches_onnxruntime(st_, pads, dil, pool, hw):
    """Any strides/pads/dilations/pool attributes: the session is refused with a message, or
    it runs and gives onnxruntime's output shape (and exact values on the quantization grids);
    never a crash or an out-of-bounds read (this file runs under ASan: tests/run_ort_asan.sh)."""
    rng = np.random.default_rng(0)
    W = rng.integers(-127, 128, (5, 3, 3, 2)).astype(np.float32)
    W[:, 0, 0, 0] = 127
    b = (rng.integers(-50, 50, 5) + 0.25).astype(np.float32)
    x = rng.integers(0, 128, (1, 3, hw, hw + 1)).astype(np.float32)
    x[0, 0, 0, 0] = 127
    node, inits = make_predicted_conv_node("pc", "X", "Y", W, b, bits=8)   # W on its grid
    attrs = {"strides": st_, "pads": pads, "dilations": dil}
    if pool is not None:
        attrs.update(pool_kernel=pool[0], pool_strides=pool[1], pool_pads=pool[2])
    del node.attribute[:]
    node.attribute.extend([helper.make_attribute("kernel_shape", [3, 2]),
                           helper.make_attribute("activation", "relu")] +
                          [helper.make_attribute(k, v) for k, v in attrs.items()])
    X = helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))
    Y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([node], "g", [X], [Y], inits),
                              opset_imports=[helper.make_opsetid("", 17), opset_import()],
                              ir_version=9)
    try:
        y = sparsekit.session(model).run(None, {"X": x})[0]
    except Exception as e:   # refused: with a message naming the node and the problem
        assert "pc" in str(e) and len(str(e)) > 20
        return
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["C0"], strides=st_, pads=pads,
                              dilations=dil), helper.make_node("Relu", ["C0"], ["A0" if pool else "Y"])]
    if pool is not None:
        nodes.append(helper.make_node("MaxPool", ["A0"], ["Y"], kernel_shape=pool[0],
                                      strides=pool[1], pads=pool[2]))
    dense = helper.make_model(helper.make_graph(
        nodes, "g", [X], [Y], [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "B")]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    want = run_stock(dense, {"X": x})
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=1e-6)


# ------------------------------------------------------------------ issue 21: hardening --
@pytest.mark.parametrize("tensor", ["W", "bias", "W_q_scale"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_fail_creation(tensor, bad):
    """One rule for every op: weights, biases and prediction tensors must be finite (a NaN
    bias was turned into zeros where Conv + ReLU gives NaN)."""
    rng = np.random.default_rng(21)
    W = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    sparse, _ = _models(W, b, (1, 4, 8, 8), pads=(1, 1, 1, 1))
    sparsekit.session(sparse)

    def poke(a):
        a.reshape(-1)[1] = bad
        return a
    with pytest.raises(Exception, match=rf"PredictedConv node 'pc': {tensor}(\[1\])? .*"
                                        r"(non-finite|not a finite)"):
        sparsekit.session(_edit(sparse, {"W": ".W", "bias": ".B", "W_q_scale": ".W_q_scale"}[tensor],
                                poke))


@pytest.mark.parametrize("attrs,match", [
    ({"pads": [3, 1, 1, 1]}, r"'pads' .* must be smaller than the dilated kernel extent"),
    ({"pads": [0, 2**20, 0, 0]}, r"'pads' .* must be smaller than the dilated kernel extent"),
    ({"strides": [4097, 1]}, r"must be in \[1, 4096\]"),
    ({"group": 2}, r"attribute 'group' is not implemented"),
    ({"auto_pad": "SAME_LOWER"}, r"attribute 'auto_pad' is not implemented"),
    ({"residual_after_act": 0}, r"attribute 'residual_after_act' is not implemented"),
    ({"format": "bsr"}, r"attribute 'format' is not implemented"),
])
def test_rejects_out_of_bound_and_unimplemented_attributes(attrs, match):
    rng = np.random.default_rng(22)
    W = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    sparse, _ = _models(W, np.zeros(6, np.float32), (1, 4, 8, 8), pads=(1, 1, 1, 1))
    n = sparse.graph.node[0]
    for k, v in attrs.items():
        for i, a in enumerate(n.attribute):
            if a.name == k:
                del n.attribute[i]
                break
        n.attribute.append(helper.make_attribute(k, v))
    with pytest.raises(Exception, match=match) as e:
        sparsekit.session(sparse)
    assert "PredictedConv node 'pc'" in str(e.value)


def test_stock_defaults_are_accepted():
    rng = np.random.default_rng(23)
    W = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    sparse, _ = _models(W, np.zeros(6, np.float32), (1, 4, 8, 8), pads=(2, 2, 2, 2))
    sparse.graph.node[0].attribute.extend([helper.make_attribute("group", 1),
                                           helper.make_attribute("auto_pad", "NOTSET")])
    assert sparsekit.session(sparse).run(None, {"X": np.ones((1, 4, 8, 8), np.float32)})[0].shape \
        == (1, 6, 10, 10)
