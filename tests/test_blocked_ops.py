"""The channel-blocked layout in onnxruntime (issue 20): Reorder (NCHW <-> NCHWc8),
DepthwiseConv and SparseConv (1x1, 1x4 blocks) with layout = "NCHWc8", chained, and the two
merged (SparseConvDepthwise), against the same convs in stock onnxruntime, for every ISA the
build has and 1 / 2 threads; and models whose blocked tensors disagree with their declared
shapes, refused at session creation (or, with shapes unknown there, at run time)."""
from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import sparsekit
from sparsekit.convert.layout import fuse_expansions
from sparsekit.pack import make_depthwise_node, make_reorder_node, make_sparse_conv_node
from ort_helpers import assert_close, make_model, run_stock, vinfo


def blocked(x):
    """numpy NCHW -> NCHWc8, lanes past C zero."""
    N, C, H, W = x.shape
    nb = -(-C // 8)
    out = np.zeros((N, nb * 8, H, W), np.float32)
    out[:, :C] = x
    return np.ascontiguousarray(out.reshape(N, nb, 8, H, W).transpose(0, 1, 3, 4, 2))


# (N, C, H, W, k, stride, pads) of the first conv; the second is 3x3 s1 p1 on its output
CHAINS = {
    "3x3-s1-8ch": (1, 8, 14, 14, 3, 1, (1, 1, 1, 1)),
    "3x3-s2-13ch": (2, 13, 15, 16, 3, 2, (1, 1, 1, 1)),
    "3x3-s2-tf-5ch": (1, 5, 16, 16, 3, 2, (0, 0, 1, 1)),
    "5x5-s1-20ch": (1, 20, 7, 7, 5, 1, (2, 2, 2, 2)),
    "5x5-s2-33ch": (1, 33, 17, 19, 5, 2, (2, 2, 2, 2)),
    "3x3-nopad-1ch": (1, 1, 7, 9, 3, 1, (0, 0, 0, 0)),
    "7x7-s1-9ch": (1, 9, 10, 10, 7, 1, (3, 3, 3, 3)),
    "3x3-s3-bigpad-3ch": (1, 3, 6, 6, 3, 3, (2, 2, 2, 1)),
    "3x3-56x56-40ch": (1, 40, 56, 56, 3, 1, (1, 1, 1, 1)),
    "3x3-112-s2-16ch": (1, 16, 112, 112, 3, 2, (0, 0, 1, 1)),
}


def _act(src, out, act, tag):
    """Dense activation nodes (none / Relu / Clip(0, 6)) from src to out."""
    if act == "relu":
        return [helper.make_node("Relu", [src], [out])], []
    if act == "clip":
        lo, hi = f"{tag}.lo", f"{tag}.hi"
        return ([helper.make_node("Clip", [src, lo, hi], [out])],
                [numpy_helper.from_array(np.array(0.0, np.float32), lo),
                 numpy_helper.from_array(np.array(6.0, np.float32), hi)])
    return [helper.make_node("Identity", [src], [out])], []


def chain_models(rng, N, C, H, W, k, s, pads, act):
    """x -> Reorder -> DepthwiseConv (k, s, pads, act) -> DepthwiseConv (3x3, ReLU6) -> Reorder,
    and the same two convs in plain ONNX."""
    w1 = rng.standard_normal((C, 1, k, k)).astype(np.float32)
    b1 = rng.standard_normal(C).astype(np.float32)
    w2 = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
    b2 = rng.standard_normal(C).astype(np.float32)
    r1, _ = make_reorder_node("to_c8", "X", "Xb", "NCHWc8")
    d1, i1 = make_depthwise_node("dw1", "Xb", "Hb", w1, b1, strides=(s, s), pads=pads,
                                 activation=act, layout="NCHWc8",
                                 **(dict(clip_min=0.0, clip_max=6.0) if act == "clip" else {}))
    d2, i2 = make_depthwise_node("dw2", "Hb", "Yb", w2, b2, pads=(1, 1, 1, 1), activation="clip",
                                 clip_min=0.0, clip_max=6.0, layout="NCHWc8")
    r2, _ = make_reorder_node("to_nchw", "Yb", "Y", "NCHW", channels=C)
    inputs = [vinfo("X", [N, C, H, W])]
    sparse = make_model([r1, d1, d2, r2], inputs, [vinfo("Y", None)], i1 + i2)
    c1 = helper.make_node("Conv", ["X", "W1", "B1"], ["C1"], group=C, kernel_shape=[k, k],
                          strides=[s, s], pads=list(pads))
    e1, ei1 = _act("C1", "H", act, "a1")
    c2 = helper.make_node("Conv", ["H", "W2", "B2"], ["C2"], group=C, kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1])
    e2, ei2 = _act("C2", "Y", "clip", "a2")
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"),
                                                        (b2, "B2"))]
    dense = make_model([c1] + e1 + [c2] + e2, inputs, [vinfo("Y", None)], inits + ei1 + ei2,
                       sparse=False)
    return sparse, dense


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", ["none", "relu", "clip"])
@pytest.mark.parametrize("case", list(CHAINS))
def test_blocked_chain_matches_stock(isa, case, act, threads):
    N, C, H, W, k, s, pads = CHAINS[case]
    rng = np.random.default_rng(len(case) * 31 + len(act))
    sparse, dense = chain_models(rng, N, C, H, W, k, s, pads, act)
    feeds = {"X": rng.standard_normal((N, C, H, W)).astype(np.float32)}
    y = sparsekit.session(sparse, threads=threads).run(None, feeds)[0]
    assert_close(y, run_stock(dense, feeds), k * k * 9)


@pytest.mark.parametrize("C", [1, 7, 8, 9, 24, 67])
def test_reorder_layout_and_roundtrip(isa, C):
    """The blocked tensor is exactly numpy's NCHWc8 (zero lanes past C); back to NCHW is exact."""
    rng = np.random.default_rng(C)
    r1, _ = make_reorder_node("a", "X", "Xb", "NCHWc8")
    r2, _ = make_reorder_node("b", "Xb", "Y", "NCHW", channels=C)
    m = make_model([r1, r2], [vinfo("X", [2, C, 5, 3])], [vinfo("Xb", None), vinfo("Y", None)])
    x = rng.standard_normal((2, C, 5, 3)).astype(np.float32)
    xb, y = sparsekit.session(m, threads=2).run(None, {"X": x})
    np.testing.assert_array_equal(xb, blocked(x))
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("N, C, H, W", [(1, 20, 7, 7), (2, 8, 1, 1), (1, 1280, 7, 7),
                                         (1, 3, 5, 3), (1, 16, 112, 112), (1, 5, 0, 4)])
def test_reorder_global_average_pool_equals_stock(N, C, H, W):
    """pool = "global_average": the Reorder to NCHW and the GlobalAveragePool after it in one op,
    equal to stock onnxruntime's GlobalAveragePool on the NCHW tensor and to numpy's float64 mean
    (a 112x112 plane: the float sums stay precise; an empty plane: NaN, as 0/0)."""
    rng = np.random.default_rng(C * H + W)
    x = (rng.standard_normal((N, C, H, W)) + 3.0).astype(np.float32)
    r, _ = make_reorder_node("pool", "Xb", "Y", "NCHW", channels=C, pool="global_average")
    m = make_model([r], [vinfo("Xb", [N, -(-C // 8), H, W, 8])], [vinfo("Y", None)])
    y = sparsekit.session(m, threads=2).run(None, {"Xb": blocked(x)})[0]
    assert y.shape == (N, C, 1, 1)
    if H * W == 0:
        assert np.isnan(y).all()
        return
    gap = helper.make_node("GlobalAveragePool", ["X"], ["Y"])
    want = run_stock(make_model([gap], [vinfo("X", [N, C, H, W])], [vinfo("Y", None)]), {"X": x})
    # stock sums a 112x112 plane in float to ~3e-6; ours stays within 1e-7 of float64's mean
    np.testing.assert_allclose(y, want, rtol=1e-5)
    np.testing.assert_allclose(y, x.astype(np.float64).mean((2, 3), keepdims=True), rtol=3e-7)


def test_reorder_pool_attribute_checked():
    with pytest.raises(sparsekit.SparsekitError, match="pool must be"):
        make_reorder_node("r", "X", "Y", "NCHWc8", pool="global_average")
    for to, pool, what in (("NCHWc8", "global_average", "needs to = \"NCHW\""),
                           ("NCHW", "max", "attribute 'pool' must be")):
        bad = helper.make_node("Reorder", ["X"], ["Y"], domain="ai.sparsekit", to=to, channels=8,
                               pool=pool)
        m = make_model([bad], [vinfo("X", None)], [vinfo("Y", None)])
        with pytest.raises(Exception, match=what):
            sparsekit.session(m)


def _dw_blocked_model(declared, C=20, layout="NCHWc8"):
    w = np.ones((C, 1, 3, 3), np.float32)
    node, inits = make_depthwise_node("dw", "Xb", "Y", w, pads=(1, 1, 1, 1), layout=layout)
    return make_model([node], [vinfo("Xb", declared)], [vinfo("Y", None)], inits)


@pytest.mark.parametrize("declared, what", [
    ([1, 20, 8, 8], "declared with shape \\[1, 20, 8, 8\\].*needs \\[N, 3, H, W, 8\\]"),
    ([1, 2, 8, 8, 8], "declared with shape \\[1, 2, 8, 8, 8\\].*needs \\[N, 3, H, W, 8\\]"),
    ([1, 4, 8, 8, 8], "needs \\[N, 3, H, W, 8\\]"),
    ([1, 3, 8, 8, 16], "needs \\[N, 3, H, W, 8\\]"),
])
def test_blocked_shape_disagreeing_with_declared_fails_at_creation(declared, what):
    with pytest.raises(Exception, match=what):
        sparsekit.session(_dw_blocked_model(declared))


def test_reorder_declared_shape_and_attributes_checked_at_creation():
    r, _ = make_reorder_node("r", "Xb", "Y", "NCHW", channels=20)
    m = make_model([r], [vinfo("Xb", [1, 2, 4, 4, 8])], [vinfo("Y", None)])
    with pytest.raises(Exception, match="needs \\[N, 3, H, W, 8\\]"):
        sparsekit.session(m)
    r, _ = make_reorder_node("r", "X", "Y", "NCHWc8", channels=20)
    m = make_model([r], [vinfo("X", [1, 19, 4, 4])], [vinfo("Y", None)])
    with pytest.raises(Exception, match="needs \\[N, 20, H, W\\]"):
        sparsekit.session(m)
    bad = helper.make_node("Reorder", ["X"], ["Y"], domain="ai.sparsekit", to="NCHW")
    m = make_model([bad], [vinfo("X", [1, 1, 4, 4, 8])], [vinfo("Y", None)])
    with pytest.raises(Exception, match="channels"):
        sparsekit.session(m)
    bad = helper.make_node("Reorder", ["X"], ["Y"], domain="ai.sparsekit", to="NHWC")
    m = make_model([bad], [vinfo("X", [1, 4, 4, 4])], [vinfo("Y", None)])
    with pytest.raises(Exception, match="attribute 'to' must be"):
        sparsekit.session(m)
    m = _dw_blocked_model([1, 3, 8, 8, 8])
    next(a for a in m.graph.node[0].attribute if a.name == "layout").s = b"NHWC"  # past pack
    with pytest.raises(Exception, match="attribute 'layout' must be"):
        sparsekit.session(m)
    with pytest.raises(sparsekit.SparsekitError, match="layout must be one of"):
        _dw_blocked_model([1, 3, 8, 8, 8], layout="NHWC")


def test_blocked_shape_unknown_at_creation_is_checked_at_run():
    """Declared dims unknown: a wrong tensor fails the run with a message, never a read past
    the tensor, and the session stays usable."""
    sess = sparsekit.session(_dw_blocked_model(["N", "B", "H", "W", "L"]))
    with pytest.raises(Exception, match="needs \\[N, 3, H, W, 8\\]"):
        sess.run(None, {"Xb": np.zeros((1, 2, 8, 8, 8), np.float32)})
    with pytest.raises(Exception, match="needs \\[N, 3, H, W, 8\\]"):
        sess.run(None, {"Xb": np.zeros((1, 3, 8, 8, 4), np.float32)})
    y = sess.run(None, {"Xb": np.ones((1, 3, 8, 8, 8), np.float32)})[0]
    assert y.shape == (1, 3, 8, 8, 8)
    assert y[0, 0, 3, 3, 0] == 9.0 and y[0, 2, 3, 3, 7] == 0.0  # lanes past C = 20: zero weights
    r, _ = make_reorder_node("r", "Xb", "Y", "NCHW", channels=20)
    m = make_model([r], [vinfo("Xb", ["N", "B", "H", "W", "L"])], [vinfo("Y", None)])
    with pytest.raises(Exception, match="needs \\[N, 3, H, W, 8\\]"):
        sparsekit.session(m).run(None, {"Xb": np.zeros((1, 2, 4, 4, 8), np.float32)})


@pytest.mark.parametrize("shape", [
    (0, 3, 8, 8, 8), (2, 3, 1, 1, 8), (1, 3, 0, 8, 8), (1, 3, 8, 0, 8), (1, 3, 2, 40, 8),
    (1, 3, 8, 8, 1), (1, 3, 8, 8, 9), (1, 0, 8, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8, 8, 1),
])
def test_blocked_input_shapes_run_or_fail_cleanly(isa, shape):
    """Whatever shape reaches a blocked DepthwiseConv (declared shape unknown): the right
    answer or a clean run error, never a read past the tensor (the suite also runs under ASan);
    the session stays usable."""
    sess = sparsekit.session(_dw_blocked_model(None))
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    valid = len(shape) == 5 and shape[1] == 3 and shape[4] == 8 and min(shape[2:4]) >= 1
    if not valid:
        with pytest.raises(Exception, match="DepthwiseConv node 'dw'"):
            sess.run(None, {"Xb": x})
    else:
        y = sess.run(None, {"Xb": x})[0]
        N, _, H, W, _ = shape
        xn = x.transpose(0, 1, 4, 2, 3).reshape(N, 24, H, W)[:, :20]
        xp = np.pad(xn, ((0, 0), (0, 0), (1, 1), (1, 1)))
        want = sum(xp[:, :, dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3))
        got = y.transpose(0, 1, 4, 2, 3).reshape(N, 24, H, W)
        np.testing.assert_allclose(got[:, :20], want, rtol=1e-5, atol=1e-5)
        assert not got[:, 20:].any()  # lanes past C: zero weights, zero bias, no activation
    assert sess.run(None, {"Xb": np.ones((1, 3, 4, 4, 8), np.float32)})[0].shape == (1, 3, 4, 4, 8)


@pytest.mark.parametrize("shape", [(0, 5, 3, 3), (2, 0, 3, 3), (1, 5, 0, 7), (1, 5, 3, 3, 1)])
def test_reorder_edge_shapes(shape):
    r1, _ = make_reorder_node("a", "X", "Xb", "NCHWc8")
    m = make_model([r1], [vinfo("X", None)], [vinfo("Xb", None)])
    sess = sparsekit.session(m)
    x = np.ones(shape, np.float32)
    if len(shape) != 4:
        with pytest.raises(Exception, match="X must be 4-D"):
            sess.run(None, {"X": x})
    else:
        np.testing.assert_array_equal(sess.run(None, {"X": x})[0], blocked(x))


# ---- blocked SparseConv ----------------------------------------------------------------------
# (N, C, H, W, M1, M2, depthwise stride, 1x4 sparsity): Reorder -> SparseConv C->M1 -> blocked
# depthwise 3x3 -> SparseConv M1->M2 -> Reorder.  Channel counts not multiples of 8 (or 4),
# odd planes, 1 pixel (the group split), large planes (the pixel split, several panel chunks).
PW_CHAINS = {
    "8-16-8-7x7": (1, 8, 7, 7, 16, 8, 1, 0.5),
    "13-20-13-9x11-s2": (2, 13, 9, 11, 20, 13, 2, 0.7),
    "3-5-6-5x5-dense": (1, 3, 5, 5, 5, 6, 1, 0.0),
    "32-16-16-20x20-80pct-kept": (1, 32, 20, 20, 16, 16, 1, 0.2),
    "33-67-33-14x14": (1, 33, 14, 14, 67, 33, 1, 0.9),
    "17-12-9-1x1": (1, 17, 1, 1, 12, 9, 1, 0.6),
    "32-64-64-28x28-s2": (1, 32, 28, 28, 64, 64, 2, 0.9),
    "24-44-24-57x31": (1, 24, 57, 31, 44, 24, 1, 0.95),
    "100-200-100-7x7": (2, 100, 7, 7, 200, 100, 1, 0.9),
    # wide work items in narrow panel chunks: 24-44-24's second conv in chunks of 48 pixels,
    # this one's second (150 input channels) in chunks of 32; its first, an expansion, in one
    "20-150-20-37x41": (1, 20, 37, 41, 150, 20, 1, 0.85),
}


def sparse_1x4(rng, M, C, sparsity, empty_groups=True):
    """[M, C, 1, 1] weight pruned in blocks of 4 output rows at one input channel; with
    empty_groups, every third group of 4 rows has no weight at all (empty rows)."""
    w = rng.standard_normal((M, C)).astype(np.float32)
    G = -(-M // 4)
    keep = rng.random((G, C)) >= sparsity
    if empty_groups and G > 2:
        keep[1::3] = False
    w *= np.repeat(keep, 4, axis=0)[:M]
    return w.reshape(M, C, 1, 1)


def pw_chain_models(rng, N, C, H, W, M1, M2, s, sparsity, act, residual):
    """The blocked chain and the same convs in plain ONNX; with residual (M2 == C), the second
    SparseConv adds the chain's blocked input before its ReLU6."""
    w1 = sparse_1x4(rng, M1, C, sparsity)
    b1 = rng.standard_normal(M1).astype(np.float32)
    wd = rng.standard_normal((M1, 1, 3, 3)).astype(np.float32)
    bd = rng.standard_normal(M1).astype(np.float32)
    w2 = sparse_1x4(rng, M2, M1, sparsity)
    b2 = rng.standard_normal(M2).astype(np.float32)
    clip = dict(clip_min=0.0, clip_max=6.0)
    r1, _ = make_reorder_node("to_c8", "X", "Xb", "NCHWc8")
    p1, i1 = make_sparse_conv_node("pw1", "Xb", "Ab", w1, b1, activation=act, layout="NCHWc8",
                                   **(clip if act == "clip" else {}))
    d1, i2 = make_depthwise_node("dw", "Ab", "Bb", wd, bd, strides=(s, s), pads=(1, 1, 1, 1),
                                 activation="clip", layout="NCHWc8", **clip)
    p2, i3 = make_sparse_conv_node("pw2", "Bb", "Yb", w2, b2, activation="clip", layout="NCHWc8",
                                   residual="Xb" if residual else None, **clip)
    r2, _ = make_reorder_node("to_nchw", "Yb", "Y", "NCHW", channels=M2)
    inputs = [vinfo("X", [N, C, H, W])]
    sparse = make_model([r1, p1, d1, p2, r2], inputs, [vinfo("Y", None)], i1 + i2 + i3)
    if residual:  # stride 2 has no residual: the planes differ
        assert s == 1 and M2 == C
    c1 = helper.make_node("Conv", ["X", "W1", "B1"], ["C1"], kernel_shape=[1, 1])
    e1, ei1 = _act("C1", "A", act, "a1")
    cd = helper.make_node("Conv", ["A", "WD", "BD"], ["CD"], group=M1, kernel_shape=[3, 3],
                          strides=[s, s], pads=[1, 1, 1, 1])
    ed, eid = _act("CD", "B", "clip", "ad")
    c2 = helper.make_node("Conv", ["B", "W2", "B2"], ["C2"], kernel_shape=[1, 1])
    nodes = [c1] + e1 + [cd] + ed + [c2]
    if residual:
        nodes.append(helper.make_node("Add", ["C2", "X"], ["S2"]))
    e2, ei2 = _act("S2" if residual else "C2", "Y", "clip", "a2")
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (w1, "W1"), (b1, "B1"), (wd, "WD"), (bd, "BD"), (w2, "W2"), (b2, "B2"))]
    dense = make_model(nodes + e2, inputs, [vinfo("Y", None)], inits + ei1 + eid + ei2,
                       sparse=False)
    return sparse, dense


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", ["none", "relu", "clip"])
@pytest.mark.parametrize("case", list(PW_CHAINS))
def test_blocked_pointwise_chain_matches_stock(isa, case, act, threads):
    N, C, H, W, M1, M2, s, sp = PW_CHAINS[case]
    residual = s == 1 and M2 == C and act != "none"
    rng = np.random.default_rng(len(case) * 17 + len(act))
    sparse, dense = pw_chain_models(rng, N, C, H, W, M1, M2, s, sp, act, residual)
    feeds = {"X": rng.standard_normal((N, C, H, W)).astype(np.float32)}
    y = sparsekit.session(sparse, threads=threads).run(None, feeds)[0]
    assert_close(y, run_stock(dense, feeds), 9 * (C + M1))


# 1x4 sparsity 0.5: the 1x4 kernel; 0.0 and 0.2 (at least 75% of the blocks kept): the dense one
@pytest.mark.parametrize("sp", [0.5, 0.2, 0.0])
@pytest.mark.parametrize("after", [False, True])
def test_blocked_sparse_conv_lanes_and_residual(isa, after, sp):
    """The blocked output itself: numpy's NCHWc8 of the NCHW op's result on the same weights,
    lanes past M equal to act(0) (+ the residual's lanes past M), residual before or after the
    activation."""
    rng = np.random.default_rng(3 + after)
    N, C, M, H, W = 2, 11, 13, 5, 7
    w = sparse_1x4(rng, M, C, sp)
    b = rng.standard_normal(M).astype(np.float32)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    r = rng.standard_normal((N, 2, H, W, 8)).astype(np.float32)
    kw = dict(activation="clip", clip_min=-0.5, clip_max=0.7, residual="R",
              residual_after_act=after)
    nb, ib = make_sparse_conv_node("pw", "Xb", "Yb", w, b, layout="NCHWc8", **kw)
    mb = make_model([nb], [vinfo("Xb", [N, 2, H, W, 8]), vinfo("R", [N, 2, H, W, 8])],
                    [vinfo("Yb", None)], ib)
    nn_, in_ = make_sparse_conv_node("pw", "X", "Y", w, b, **kw)
    rn = r.transpose(0, 1, 4, 2, 3).reshape(N, 16, H, W)
    mn = make_model([nn_], [vinfo("X", [N, C, H, W]), vinfo("R", [N, M, H, W])],
                    [vinfo("Y", None)], in_)
    yb = sparsekit.session(mb, threads=2).run(None, {"Xb": blocked(x), "R": r})[0]
    yn = sparsekit.session(mn).run(None, {"X": x, "R": np.ascontiguousarray(rn[:, :M])})[0]
    assert yb.shape == (N, 2, H, W, 8)
    got = yb.transpose(0, 1, 4, 2, 3).reshape(N, 16, H, W)
    np.testing.assert_allclose(got[:, :M], yn, rtol=1e-5, atol=1e-5)
    pad = rn[:, M:]
    want_pad = np.clip(0.0, -0.5, 0.7) + pad if after else np.clip(pad, -0.5, 0.7)
    np.testing.assert_allclose(got[:, M:], want_pad, rtol=1e-6, atol=1e-6)


def _pw_blocked_model(declared, C=20, M=12, res_declared=None, **kw):
    w = sparse_1x4(np.random.default_rng(0), M, C, 0.5)
    node, inits = make_sparse_conv_node("pw", "Xb", "Y", w, layout="NCHWc8",
                                        residual="R" if res_declared is not None else None, **kw)
    inputs = [vinfo("Xb", declared)]
    if res_declared is not None:
        inputs.append(vinfo("R", res_declared))
    return make_model([node], inputs, [vinfo("Y", None)], inits)


@pytest.mark.parametrize("declared, res, what", [
    ([1, 20, 8, 8], None, "X is declared with shape \\[1, 20, 8, 8\\].*needs \\[N, 3, H, W, 8\\]"),
    ([1, 2, 8, 8, 8], None, "X is declared.*needs \\[N, 3, H, W, 8\\]"),
    ([1, 3, 8, 8, 4], None, "needs \\[N, 3, H, W, 8\\]"),
    ([1, 3, 8, 8, 8], [1, 12, 8, 8], "residual is declared.*needs \\[N, 2, H, W, 8\\]"),
    ([1, 3, 8, 8, 8], [1, 3, 8, 8, 8], "residual is declared.*needs \\[N, 2, H, W, 8\\]"),
])
def test_blocked_sparse_conv_declared_shape_fails_at_creation(declared, res, what):
    with pytest.raises(Exception, match=what) as e:
        sparsekit.session(_pw_blocked_model(declared, res_declared=res))
    assert "SparseConv" in str(e.value)


def test_blocked_sparse_conv_refuses_what_it_cannot_run():
    """Only 1x1 / stride 1 / no pads / 1x4 blocks run blocked: the others fail at creation
    (in pack, and in the library for a node made past pack), as does an unknown layout."""
    w = sparse_1x4(np.random.default_rng(1), 8, 8, 0.5)
    with pytest.raises(sparsekit.SparsekitError, match="needs a 1x1 conv"):
        make_sparse_conv_node("pw", "X", "Y", np.ones((8, 8, 3, 3), np.float32), layout="NCHWc8")
    with pytest.raises(sparsekit.SparsekitError, match="needs 1x4 blocks"):
        make_sparse_conv_node("pw", "X", "Y", w, block=1, layout="NCHWc8")
    with pytest.raises(sparsekit.SparsekitError, match="layout must be one of"):
        make_sparse_conv_node("pw", "X", "Y", w, layout="NHWC")
    for tweak, what in ((dict(block=1), "needs 1x4 blocks"),
                        (dict(strides=(2, 2)), "needs a 1x1 conv with stride 1"),
                        (dict(layout="NHWC"), "attribute 'layout' must be")):
        node, inits = make_sparse_conv_node("pw", "Xb", "Y", w, **{k: v for k, v in tweak.items()
                                                                    if k != "layout"})
        node.attribute.append(helper.make_attribute("layout", tweak.get("layout", "NCHWc8")))
        m = make_model([node], [vinfo("Xb", [1, 1, 4, 4, 8])], [vinfo("Y", None)], inits)
        with pytest.raises(Exception, match=what):
            sparsekit.session(m)


@pytest.mark.parametrize("shape", [
    (0, 3, 8, 8, 8), (2, 3, 1, 1, 8), (1, 3, 0, 8, 8), (1, 3, 8, 0, 8), (1, 3, 2, 40, 8),
    (1, 3, 8, 8, 1), (1, 3, 8, 8, 9), (1, 2, 8, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8, 8, 1),
])
def test_blocked_sparse_conv_run_shapes(isa, shape):
    """Declared shape unknown: whatever reaches the op runs right or fails the run cleanly, and
    the session stays usable (also under ASan)."""
    sess = sparsekit.session(_pw_blocked_model(None))
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    valid = len(shape) == 5 and shape[1] == 3 and shape[4] == 8
    if not valid:
        with pytest.raises(Exception, match="SparseConv node 'pw'"):
            sess.run(None, {"Xb": x})
    else:
        y = sess.run(None, {"Xb": x})[0]
        N, _, H, W, _ = shape
        assert y.shape == (N, 2, H, W, 8)
        w = sparse_1x4(np.random.default_rng(0), 12, 20, 0.5)[:, :, 0, 0]
        xn = x.transpose(0, 1, 4, 2, 3).reshape(N, 24, H, W)[:, :20]
        want = np.einsum("mc,nchw->nmhw", w, xn)
        got = y.transpose(0, 1, 4, 2, 3).reshape(N, 16, H, W)
        np.testing.assert_allclose(got[:, :12], want, rtol=1e-4, atol=1e-5)
        assert not got[:, 12:].any()
    y = sess.run(None, {"Xb": np.ones((1, 3, 4, 4, 8), np.float32)})[0]
    assert y.shape == (1, 2, 4, 4, 8)


# ---- SparseConv from NCHW into blocks (input_layout = "NCHW", layout = "NCHWc8") -------------
# (N, C, H, W, M, k, stride, pads, dilation, 1x4 sparsity): a network's stem (3 -> 32 3x3 s2),
# odd channel counts and planes, 1x1 with stride, dilation, 7x7, large planes (several pixel
# tiles), dense and very sparse weights (at least 75% of the 1x4 blocks kept: the op's dense
# kernel; fewer: the 1x4 one).
HEAD_CASES = {
    "stem-3-32-s2": (1, 3, 32, 32, 32, 3, 2, (1, 1, 1, 1), 1, 0.0),
    "stem-tf-pads": (2, 3, 17, 18, 16, 3, 2, (0, 0, 1, 1), 1, 0.0),
    "3x3-13-21": (1, 13, 9, 11, 21, 3, 1, (1, 1, 1, 1), 1, 0.7),
    "1x1-s2-24-40": (1, 24, 14, 14, 40, 1, 2, (0, 0, 0, 0), 1, 0.9),
    "1x1-s1-5-12": (1, 5, 7, 7, 12, 1, 1, (0, 0, 0, 0), 1, 0.5),
    "5x5-dil2-7-9": (1, 7, 15, 13, 9, 5, 1, (4, 4, 4, 4), 2, 0.5),
    "7x7-s2-3-64": (1, 3, 45, 47, 64, 7, 2, (3, 3, 3, 3), 1, 0.3),
    "3x3-112-3-32": (1, 3, 224, 224, 32, 3, 2, (1, 1, 1, 1), 1, 0.0),
    # phase-plane path (output rows >= 24 wide), rows not a multiple of 8 wide, a short last
    # band of output rows: stride 2 (135 rows in bands of 8) and stride 1 (41 in bands of 2)
    "stem-s2-phases-odd": (2, 3, 270, 61, 20, 3, 2, (1, 1, 1, 1), 1, 0.0),
    "3x3-s1-phases-odd": (1, 5, 41, 29, 12, 3, 1, (1, 1, 1, 1), 1, 0.5),
    # phase rows split straight from the input rows: left pads 0 (TF's SAME), 2 and 3, odd and
    # even widths (odd: the last element has no pair)
    "stem-s2-phases-tf-pads": (1, 3, 60, 57, 16, 3, 2, (0, 0, 1, 1), 1, 0.0),
    "5x5-s2-phases-pad2": (1, 3, 33, 64, 8, 5, 2, (2, 2, 2, 2), 1, 0.0),
    "7x7-s2-phases-pad3": (1, 2, 31, 49, 8, 7, 2, (3, 3, 3, 3), 1, 0.0),
    "3x3-s1-phases-pad0": (1, 2, 20, 30, 8, 3, 1, (0, 0, 0, 0), 1, 0.0),
    "3x3-all-zero": (1, 4, 6, 6, 8, 3, 1, (1, 1, 1, 1), 1, 1.0),
    "stem-s2-phases-80pct-kept": (1, 3, 64, 50, 40, 3, 2, (1, 1, 1, 1), 1, 0.2),
    "3x3-im2col-80pct-kept": (2, 7, 11, 9, 24, 3, 1, (1, 1, 1, 1), 1, 0.2),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", ["none", "relu", "clip"])
@pytest.mark.parametrize("case", list(HEAD_CASES))
def test_nchw_to_blocked_sparse_conv_matches_stock(isa, case, act, threads):
    """SparseConv reading NCHW and writing NCHWc8, then the Reorder back: equal to stock
    onnxruntime's Conv (+ activation); its blocked output is numpy's NCHWc8 of that, lanes past
    M equal to act(bias 0)."""
    N, C, H, W, M, k, s, pads, d, sp = HEAD_CASES[case]
    rng = np.random.default_rng(len(case) * 7 + len(act))
    w = rng.standard_normal((M, C, k, k)).astype(np.float32)
    G = -(-M // 4)
    w *= np.repeat(rng.random((G, C * k * k)) >= sp, 4, axis=0)[:M].reshape(M, C, k, k)
    b = rng.standard_normal(M).astype(np.float32)
    clip = dict(clip_min=0.0, clip_max=6.0) if act == "clip" else {}
    node, inits = make_sparse_conv_node("head", "X", "Yb", w, b, strides=(s, s), pads=pads,
                                        dilations=(d, d), activation=act, layout="NCHWc8",
                                        input_layout="NCHW", **clip)
    back, _ = make_reorder_node("to_nchw", "Yb", "Y", "NCHW", channels=M)
    sparse = make_model([node, back], [vinfo("X", [N, C, H, W])],
                        [vinfo("Yb", None), vinfo("Y", None)], inits)
    conv = helper.make_node("Conv", ["X", "W", "B"], ["C1"], kernel_shape=[k, k], strides=[s, s],
                            pads=list(pads), dilations=[d, d])
    e, ei = _act("C1", "Y", act, "a")
    dense = make_model([conv] + e, [vinfo("X", [N, C, H, W])], [vinfo("Y", None)],
                       [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")] + ei,
                       sparse=False)
    feeds = {"X": rng.standard_normal((N, C, H, W)).astype(np.float32)}
    yb, y = sparsekit.session(sparse, threads=threads).run(None, feeds)
    want = run_stock(dense, feeds)
    assert_close(y, want, C * k * k)
    assert yb.shape == (N, -(-M // 8)) + want.shape[2:] + (8,)
    lanes = yb.transpose(0, 1, 4, 2, 3).reshape(N, -1, *want.shape[2:])
    np.testing.assert_array_equal(lanes[:, :M], y)
    assert not lanes[:, M:].any()  # act(0): rows past M have no weights and bias 0


@pytest.mark.parametrize("pruned,dense", [(0, True), (27, True), (28, False), (54, False)])
@pytest.mark.parametrize("input_layout", ["NCHW", "NCHWc8"])
def test_blocked_sparse_conv_dense_kernel_from_three_quarters_kept(isa, pruned, dense, input_layout,
                                                                   capfd):
    """The op runs its dense kernel when at least 75% of the 1x4 blocks (over the reduction
    rows its weights read) are kept, the 1x4 kernel below; both equal to stock onnxruntime."""
    M, K = 16, 27  # 4 groups x 27 reduction rows = 108 blocks; 27 pruned leave exactly 75%
    k1 = 1 if input_layout == "NCHW" else 0
    C = K if input_layout == "NCHWc8" else 3
    w = np.random.default_rng(5).standard_normal((M, K)).astype(np.float32) + 3.0
    for j in range(pruned):  # group j % 4, reduction row j % 27: every row stays read
        w[4 * (j % 4):4 * (j % 4) + 4, j % K] = 0.0
    w = w.reshape(M, C, 1 + 2 * k1, 1 + 2 * k1)
    geo = dict(strides=(2, 2), pads=(1, 1, 1, 1), input_layout="NCHW") if k1 else {}
    node, inits = make_sparse_conv_node("c", "X", "Yb", w, layout="NCHWc8", **geo)
    back, _ = make_reorder_node("to_nchw", "Yb", "Y", "NCHW", channels=M)
    H = 30
    xshape = [1, C, H, H] if k1 else [1, -(-C // 8), H, H, 8]
    model = make_model([node, back], [vinfo("X", xshape)], [vinfo("Y", None)], inits)
    so = ort.SessionOptions()
    so.register_custom_ops_library(sparsekit.get_library_path())
    so.log_severity_level = 0
    capfd.readouterr()
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    log = capfd.readouterr().err
    assert ("dense (27 taps) path" in log) == dense, log[-500:]
    x = np.random.default_rng(6).standard_normal((1, C, H, H)).astype(np.float32)
    feed = x if k1 else np.pad(x, ((0, 0), (0, 5), (0, 0), (0, 0))).reshape(
        1, 4, 8, H, H).transpose(0, 1, 3, 4, 2)
    conv = helper.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=list(w.shape[2:]),
                            **({"strides": [2, 2], "pads": [1, 1, 1, 1]} if k1 else {}))
    ref = make_model([conv], [vinfo("X", [1, C, H, H])], [vinfo("Y", None)],
                     [numpy_helper.from_array(w, "W")], sparse=False)
    assert_close(sess.run(None, {"X": np.ascontiguousarray(feed)})[0],
                 run_stock(ref, {"X": x}), K)


@pytest.mark.parametrize("sp", [0.0, 0.5])  # the dense kernel, the 1x4 one
@pytest.mark.parametrize("H,W,s", [(9, 9, 1), (41, 29, 1), (70, 61, 2)])
def test_nchw_to_blocked_sparse_conv_residual(isa, H, W, s, sp):
    """The residual is blocked like Y, added before or after the activation (im2col path, and
    the phase-plane path from 24-wide output rows)."""
    rng = np.random.default_rng(11)
    N, C, M = 1, 6, 12
    OH, OW = (H - 1) // s + 1, (W - 1) // s + 1
    w = rng.standard_normal((M, C, 3, 3)).astype(np.float32)
    w *= np.repeat(rng.random((M // 4, C * 9)) >= sp, 4, axis=0).reshape(M, C, 3, 3)
    r = rng.standard_normal((N, 2, OH, OW, 8)).astype(np.float32)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    rn = np.ascontiguousarray(r.transpose(0, 1, 4, 2, 3).reshape(N, 16, OH, OW)[:, :M])
    for after in (False, True):
        kw = dict(strides=(s, s), pads=(1, 1, 1, 1), activation="relu", residual="R",
                  residual_after_act=after)
        nb, ib = make_sparse_conv_node("c", "X", "Yb", w, layout="NCHWc8", input_layout="NCHW",
                                       **kw)
        mb = make_model([nb], [vinfo("X", [N, C, H, W]), vinfo("R", [N, 2, OH, OW, 8])],
                        [vinfo("Yb", None)], ib)
        nn_, in_ = make_sparse_conv_node("c", "X", "Y", w, **kw)
        mn = make_model([nn_], [vinfo("X", [N, C, H, W]), vinfo("R", [N, M, OH, OW])],
                        [vinfo("Y", None)], in_)
        yb = sparsekit.session(mb, threads=2).run(None, {"X": x, "R": r})[0]
        yn = sparsekit.session(mn).run(None, {"X": x, "R": rn})[0]
        got = yb.transpose(0, 1, 4, 2, 3).reshape(N, 16, OH, OW)
        np.testing.assert_allclose(got[:, :M], yn, rtol=1e-5, atol=1e-5)


def test_nchw_to_blocked_sparse_conv_refusals():
    """input_layout NCHWc8 with layout NCHW, an unknown input_layout, block 1, and a declared X
    or residual that disagrees with the layouts fail at creation with a message."""
    w = sparse_1x4(np.random.default_rng(2), 8, 4, 0.5)
    with pytest.raises(sparsekit.SparsekitError, match="input_layout NCHWc8 needs layout"):
        make_sparse_conv_node("c", "X", "Y", w, input_layout="NCHWc8")
    with pytest.raises(sparsekit.SparsekitError, match="needs 1x4 blocks"):
        make_sparse_conv_node("c", "X", "Y", w, block=1, layout="NCHWc8", input_layout="NCHW")
    node, inits = make_sparse_conv_node("c", "X", "Y", w)
    cases = [({"input_layout": "NCHWc8"}, [1, 4, 5, 5], "input_layout NCHWc8 needs layout"),
             ({"input_layout": "NHWC", "layout": "NCHWc8"}, [1, 4, 5, 5],
              "attribute 'input_layout' must be"),
             ({"input_layout": "NCHW", "layout": "NCHWc8"}, [1, 1, 5, 5, 8],
              "X is declared with shape \\[1, 1, 5, 5, 8\\], but input_layout NCHW"),
             ({"input_layout": "NCHW", "layout": "NCHWc8"}, [1, 3, 5, 5],
              "X is declared with shape \\[1, 3, 5, 5\\]")]
    for attrs, declared, what in cases:
        n2 = helper.make_node("SparseConv", list(node.input), ["Y"], domain="ai.sparsekit",
                              **{a.name: helper.get_attribute_value(a) for a in node.attribute},
                              **attrs)
        m = make_model([n2], [vinfo("X", declared)], [vinfo("Y", None)], inits)
        with pytest.raises(Exception, match=what):
            sparsekit.session(m)
    nb, ib = make_sparse_conv_node("c", "X", "Y", w, layout="NCHWc8", input_layout="NCHW",
                                   residual="R")
    m = make_model([nb], [vinfo("X", [1, 4, 5, 5]), vinfo("R", [1, 8, 5, 5])],
                   [vinfo("Y", None)], ib)
    with pytest.raises(Exception, match="residual is declared"):
        sparsekit.session(m)


# ---- SparseConvDepthwise: an expansion and its depthwise conv, band by band ------------------
def fused(sparse):
    """The blocked chain with its first SparseConv merged into the DepthwiseConv after it, as
    convert merges them (layout.fuse_expansions)."""
    nodes = list(sparse.graph.node)
    merged = fuse_expansions(nodes, {n.output[0] for n in nodes})
    assert [n.op_type for n in merged].count("SparseConvDepthwise") == 1
    m = copy.deepcopy(sparse)
    del m.graph.node[:]
    m.graph.node.extend(merged)
    return m


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", ["none", "clip"])
@pytest.mark.parametrize("case", list(PW_CHAINS))
def test_fused_expansion_matches_stock(isa, case, act, threads):
    """PW_CHAINS with pw1 + dw as one SparseConvDepthwise: equal to stock onnxruntime (bands of
    rows on the large planes, one band on the small ones, the dense kernel at 0-20% sparsity)."""
    N, C, H, W, M1, M2, s, sp = PW_CHAINS[case]
    residual = s == 1 and M2 == C and act != "none"
    rng = np.random.default_rng(len(case) * 17 + len(act))
    sparse, dense = pw_chain_models(rng, N, C, H, W, M1, M2, s, sp, act, residual)
    feeds = {"X": rng.standard_normal((N, C, H, W)).astype(np.float32)}
    y = sparsekit.session(fused(sparse), threads=threads).run(None, feeds)[0]
    assert_close(y, run_stock(dense, feeds), 9 * (C + M1))


# (N, C, H, W, M, k, stride, pads): the depthwise geometries the blocked tests sweep, after an
# expansion, on planes wide and tall enough for several bands (and edge bands of padding only)
FUSED = {
    "112x112-s2-tf": (1, 16, 112, 112, 96, 3, 2, (0, 0, 1, 1)),
    "56x56-s1": (1, 24, 56, 56, 144, 3, 1, (1, 1, 1, 1)),
    "5x5-s2-odd": (2, 13, 45, 39, 40, 5, 2, (2, 2, 2, 2)),
    "5x5-s1-asym": (1, 9, 33, 30, 27, 5, 1, (2, 1, 2, 3)),
    "7x7-s1": (1, 8, 40, 12, 33, 7, 1, (3, 3, 3, 3)),
    "3x3-s3-bigpad": (1, 5, 29, 29, 20, 3, 3, (2, 2, 2, 1)),
    "3x3-nopad-tall": (1, 6, 300, 5, 8, 3, 1, (0, 0, 0, 0)),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(FUSED))
def test_fused_depthwise_geometries_match_stock(isa, case, threads):
    N, C, H, W, M, k, s, pads = FUSED[case]
    rng = np.random.default_rng(len(case))
    w1 = sparse_1x4(rng, M, C, 0.6)
    b1 = rng.standard_normal(M).astype(np.float32)
    wd = rng.standard_normal((M, 1, k, k)).astype(np.float32)
    bd = rng.standard_normal(M).astype(np.float32)
    clip = dict(activation="clip", clip_min=0.0, clip_max=6.0)
    r1, _ = make_reorder_node("to_c8", "X", "Xb", "NCHWc8")
    p1, i1 = make_sparse_conv_node("pw", "Xb", "Ab", w1, b1, layout="NCHWc8", **clip)
    d1, i2 = make_depthwise_node("dw", "Ab", "Bb", wd, bd, strides=(s, s), pads=pads,
                                 layout="NCHWc8", **clip)
    r2, _ = make_reorder_node("to_nchw", "Bb", "Y", "NCHW", channels=M)
    inputs = [vinfo("X", [N, C, H, W])]
    sparse = make_model([r1, p1, d1, r2], inputs, [vinfo("Y", None)], i1 + i2)
    c1 = helper.make_node("Conv", ["X", "W1", "B1"], ["C1"], kernel_shape=[1, 1])
    e1, ei1 = _act("C1", "A", "clip", "a1")
    cd = helper.make_node("Conv", ["A", "WD", "BD"], ["CD"], group=M, kernel_shape=[k, k],
                          strides=[s, s], pads=list(pads))
    ed, eid = _act("CD", "Y", "clip", "ad")
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "B1"), (wd, "WD"),
                                                        (bd, "BD"))]
    dense = make_model([c1] + e1 + [cd] + ed, inputs, [vinfo("Y", None)], inits + ei1 + eid,
                       sparse=False)
    feeds = {"X": rng.standard_normal((N, C, H, W)).astype(np.float32)}
    y = sparsekit.session(fused(sparse), threads=threads).run(None, feeds)[0]
    assert_close(y, run_stock(dense, feeds), k * k * C)


def _fused_node(M=12, C=20, dw_channels=None, **dw_attrs):
    """A lone SparseConvDepthwise node (X blocked, declared [1, 3, 8, 8, 8])."""
    rng = np.random.default_rng(0)
    p, ip = make_sparse_conv_node("pw", "Xb", "Ab", sparse_1x4(rng, M, C, 0.5), layout="NCHWc8")
    d, idw = make_depthwise_node("dw", "Ab", "Y", np.ones((dw_channels or M, 1, 3, 3), np.float32),
                                 pads=(1, 1, 1, 1), layout="NCHWc8")
    node = fuse_expansions([p, d], {"Ab"})[0]
    kept = [a for a in node.attribute if a.name not in dw_attrs]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(k, v) for k, v in dw_attrs.items()])
    return node, ip + idw


def test_fused_expansion_refuses_what_it_cannot_run():
    """At session creation, with the op named: a residual on the 1x1 conv, a depthwise weight
    of other than the expansion's channel count, either half not blocked, an attribute of the
    depthwise half it does not implement (named with its prefix)."""
    def refused(node, inits, what, declared=(1, 3, 8, 8, 8)):
        m = make_model([node], [vinfo("Xb", list(declared)), vinfo("R", None)], [vinfo("Y", None)],
                       inits)
        with pytest.raises(Exception, match=what) as e:
            sparsekit.session(m)
        assert "SparseConvDepthwise node" in str(e.value)

    node, inits = _fused_node()
    node.input[5] = "R"
    refused(node, inits, "takes no residual")
    refused(*_fused_node(dw_channels=16), "has 16 channels but the 1x1 conv makes 12")
    node, inits = _fused_node()
    next(a for a in node.attribute if a.name == "dw_layout").s = b"NCHW"
    refused(node, inits, "must both be \"NCHWc8\"")
    refused(*_fused_node(dw_auto_pad="SAME_UPPER"), "attribute 'dw_auto_pad' is not implemented")
    refused(*_fused_node(dw_dilations=[2, 2]),
            "the depthwise conv \\(inputs 6-7, attributes dw_\\*\\): attribute 'dilations' must be")
    refused(*_fused_node(), "the 1x1 conv \\(inputs 0-5\\): X is declared with shape \\[1, 2, 8, 8, 8\\]",
            declared=(1, 2, 8, 8, 8))


@pytest.mark.parametrize("shape", [
    (0, 3, 8, 8, 8), (2, 3, 1, 1, 8), (1, 3, 0, 8, 8), (1, 3, 8, 0, 8), (1, 3, 300, 2, 8),
    (1, 3, 8, 8, 1), (1, 2, 8, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8, 8, 1),
])
def test_fused_expansion_run_shapes(isa, shape):
    """Declared shape unknown: the right answer (numpy) or a clean run error, never a read past
    a tensor (the suite also runs under ASan); the session stays usable."""
    node, inits = _fused_node()
    sess = sparsekit.session(make_model([node], [vinfo("Xb", None)], [vinfo("Y", None)], inits))
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    valid = len(shape) == 5 and shape[1] == 3 and shape[4] == 8 and min(shape[2:4]) >= 1
    if not valid:
        with pytest.raises(Exception, match="SparseConvDepthwise node 'pw\\+dw'"):
            sess.run(None, {"Xb": x})
    else:
        y = sess.run(None, {"Xb": x})[0]
        N, _, H, W, _ = shape
        w = sparse_1x4(np.random.default_rng(0), 12, 20, 0.5)[:, :, 0, 0]
        xn = x.transpose(0, 1, 4, 2, 3).reshape(N, 24, H, W)[:, :20]
        a = np.pad(np.einsum("mc,nchw->nmhw", w, xn), ((0, 0), (0, 0), (1, 1), (1, 1)))
        want = sum(a[:, :, dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3))
        got = y.transpose(0, 1, 4, 2, 3).reshape(N, 16, H, W)
        np.testing.assert_allclose(got[:, :12], want, rtol=1e-4, atol=1e-4)
    assert sess.run(None, {"Xb": np.ones((1, 3, 4, 4, 8), np.float32)})[0].shape == (1, 2, 4, 4, 8)
