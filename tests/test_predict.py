"""PredictedConv (docs/predict.md): the ReLU-output prediction against a numpy model of the same
integer arithmetic, full precision wherever an output is predicted positive, exactness when the
prediction is exact, every ISA's kernel, and validation of untrusted input."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsekit
from sparsekit import _native
from sparsekit.pack import opset_import
from sparsekit.predict import make_predicted_conv_node, quantize_rows

ISAS = list(_native.available_isas())


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    monkeypatch.setenv("SPARSEKIT_ISA", request.param)
    return request.param


def _models(W, b, xshape, strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), act="relu", hi=6.0):
    node, inits = make_predicted_conv_node("pc", "X", "Y", W, b, strides=strides, pads=pads,
                                           dilations=dil, activation=act,
                                           clip_max=hi if act == "clip" else None)
    X = helper.make_tensor_value_info("X", TensorProto.FLOAT, list(xshape))
    Y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    sparse = helper.make_model(helper.make_graph([node], "g", [X], [Y], inits),
                               opset_imports=[helper.make_opsetid("", 17), opset_import()],
                               ir_version=9)
    conv = helper.make_node("Conv", ["X", "W", "B"], ["C0"], strides=list(strides),
                            pads=list(pads), dilations=list(dil))
    actn = helper.make_node("Relu", ["C0"], ["Y"]) if act == "relu" else \
        helper.make_node("Clip", ["C0", "lo", "hi"], ["Y"])
    cinits = [numpy_helper.from_array(np.asarray(W, np.float32), "W"),
              numpy_helper.from_array(np.asarray(b, np.float32), "B"),
              numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
              numpy_helper.from_array(np.array(hi, np.float32), "hi")]
    dense = helper.make_model(helper.make_graph([conv, actn], "g", [X], [Y], cinits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return sparse, dense


def _im2col(x, kh, kw, strides, pads, dil):
    """Pixel-major patches [N, P, C*kh*kw] in (c, ky, kx) order, zero outside."""
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    OH = (H + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) // strides[0] + 1
    OW = (W + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // strides[1] + 1
    cols = np.empty((N, OH, OW, C, kh, kw), np.float32)
    for ky in range(kh):
        for kx in range(kw):
            ys, xs = ky * dil[0], kx * dil[1]
            cols[:, :, :, :, ky, kx] = xp[:, :, ys:ys + strides[0] * OH:strides[0],
                                          xs:xs + strides[1] * OW:strides[1]].transpose(0, 2, 3, 1)
    return cols.reshape(N, OH * OW, C * kh * kw), OH, OW


def _predicted(W, b, x, strides, pads, dil):
    """Which outputs the op must compute: the documented integer prediction, in numpy."""
    M = W.shape[0]
    q, scale = quantize_rows(W.reshape(M, -1))
    cols, OH, OW = _im2col(x, W.shape[2], W.shape[3], strides, pads, dil)
    out = np.empty((x.shape[0], M, OH * OW), bool)
    for n in range(x.shape[0]):
        lo, hi = min(0.0, float(x[n].min())), max(0.0, float(x[n].max()))
        sx = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(127))
        inv = np.float32(1) / sx if sx > 0 else np.float32(0)
        zx = int(np.floor(np.float32(-lo) / sx + 0.5)) if sx > 0 else 0   # lround, -lo >= 0
        t = (cols[n].astype(np.float32) * inv).astype(np.float32) + np.float32(zx + 0.5)
        xq = np.floor(np.clip(t, 0, 127)).astype(np.int64)
        acc = xq @ q.astype(np.int64).T - zx * q.astype(np.int64).sum(axis=1)   # [P, M]
        s = (sx * scale).astype(np.float32).astype(np.float64)
        pred = acc.astype(np.float32).astype(np.float64) * s + np.asarray(b, np.float64)
        out[n] = (pred > 0).T
    return out.reshape(x.shape[0], M, OH, OW)


CASES = {
    # name: (N, C, H, W, M, kh, kw, strides, pads, dilations)
    "3x3-pad": (2, 16, 13, 11, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "1x1": (1, 32, 9, 9, 19, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    "3x3-s2": (1, 8, 17, 16, 13, 3, 3, (2, 2), (1, 0, 1, 1), (1, 1)),
    "5x5-dil2": (1, 5, 15, 14, 7, 5, 5, (1, 1), (2, 2, 2, 2), (2, 2)),
    "k-not-4": (3, 3, 10, 10, 9, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),   # K = 27
}


@pytest.mark.parametrize("act", ["relu", "clip"])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_computes_exactly_where_predicted_positive(isa, case, signed, act):
    N, C, H, Wd, M, kh, kw, st, pd, dl = CASES[case]
    rng = np.random.default_rng(len(case) + 7 * signed)
    W = (rng.standard_normal((M, C, kh, kw)) / np.sqrt(C * kh * kw)).astype(np.float32)
    b = (0.1 * rng.standard_normal(M)).astype(np.float32)
    x = rng.standard_normal((N, C, H, Wd)).astype(np.float32)
    if not signed:
        x = np.maximum(x, 0)          # a ReLU's output: no zero point
    sparse, dense = _models(W, b, x.shape, st, pd, dl, act)
    for threads in (1, 2):
        y = sparsekit.session(sparse, threads=threads).run(None, {"X": x})[0]
        want = ort.InferenceSession(dense.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
        computed = _predicted(W, b, x, st, pd, dl)
        scale = max(1e-3, float(np.abs(want).max()))
        np.testing.assert_allclose(y[computed], want[computed], rtol=1e-4, atol=1e-5 * scale)
        assert (y[~computed] == 0).all()
        # the prediction is good: it loses few outputs, and none large
        pos = want > 0
        assert (computed & pos).sum() >= 0.95 * pos.sum()


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
    want = ort.InferenceSession(dense.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_quantize_rows():
    W = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 127.0, -127.0]], np.float32)
    q, s = quantize_rows(W)
    assert q.dtype == np.int8 and s.dtype == np.float32
    assert np.abs(q).max() <= 127 and (q != -128).all()
    assert (np.abs(q * s[:, None] - W) <= s[:, None] / 2 + 1e-7).all()
    assert s[1] == 0 and (q[1] == 0).all()


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
