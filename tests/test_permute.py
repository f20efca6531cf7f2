"""sparsekit.permute: output-channel permutation before 1x4 block pruning.

Every check runs the models in stock onnxruntime: a permuted model must compute what the
original computes, and only initializer values may move."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from sparsekit.graph import node_names, prunable_layers
from sparsekit.patterns import block_mask
from sparsekit.permute import channel_region, kept_share, permute_rows, row_grouping
from sparsekit.prune import prune


def _run(m, x):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def _arr(rng, shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _chain_model(seed=0, c_in=8, c_mid=32, c_out=16, residual=False, output_mid=False,
                 shared=False):
    """Conv 1x1 (bias) -> BatchNormalization -> Clip -> depthwise 3x3 (bias) -> Mul by a
    per-channel constant -> HardSwish -> Conv 1x1 -> [Add x] -> GlobalAveragePool -> Flatten ->
    Gemm; the first conv's rows are what gets permuted."""
    rng = np.random.default_rng(seed)
    # rows that come in pairs with disjoint supports, interleaved: a grouping problem with an
    # obviously better answer than the identity
    w1 = _arr(rng, (c_mid, c_in, 1, 1))
    w1[0::2, : c_in // 2] *= 0.02
    w1[1::2, c_in // 2:] *= 0.02
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(_arr(rng, c_mid, 0.1), "b1"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, c_mid).astype(np.float32), "bn_s"),
        numpy_helper.from_array(_arr(rng, c_mid, 0.1), "bn_b"),
        numpy_helper.from_array(_arr(rng, c_mid, 0.1), "bn_m"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, c_mid).astype(np.float32), "bn_v"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        numpy_helper.from_array(_arr(rng, (c_mid, 1, 3, 3)), "wd"),
        numpy_helper.from_array(_arr(rng, c_mid, 0.1), "bd"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, (1, c_mid, 1, 1)).astype(np.float32), "scale"),
        numpy_helper.from_array(_arr(rng, (c_out, c_mid, 1, 1)), "w2"),
        numpy_helper.from_array(_arr(rng, (10, c_out)), "wf"),
        numpy_helper.from_array(_arr(rng, 10, 0.1), "bf"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="pw1"),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["n1"], name="bn1"),
        helper.make_node("Clip", ["n1", "lo", "hi"], ["r1"], name="clip1"),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["d1"], name="dw", group=c_mid, pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["d1", "scale"], ["s1"], name="mul"),
        helper.make_node("HardSwish", ["s1"], ["h1"], name="hs"),
        helper.make_node("Conv", ["h1", "w2"], ["c2"], name="pw2"),
    ]
    last = "c2"
    if residual:               # pw2's channels meet another tensor: its region is not closed
        inits.append(numpy_helper.from_array(_arr(rng, (c_out, c_in, 1, 1)), "wr"))
        nodes += [helper.make_node("Conv", ["x", "wr"], ["cr"], name="pwr"),
                  helper.make_node("Add", ["c2", "cr"], ["a2"], name="add")]
        last = "a2"
    if shared:                 # a second node reads the first conv's weight
        nodes.append(helper.make_node("Conv", ["x", "w1"], ["twin"], name="twin"))
    nodes += [helper.make_node("GlobalAveragePool", [last], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])]
    if output_mid:
        outputs.append(helper.make_tensor_value_info("r1", TensorProto.FLOAT, ["N", c_mid, 9, 9]))
    if shared:
        outputs.append(helper.make_tensor_value_info("twin", TensorProto.FLOAT, ["N", c_mid, 9, 9]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["N", c_in, 9, 9])],
                          outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m)
    return m


def _layers(m):
    return {c.name: c for c in prunable_layers(m, node_names(m.graph))}


def _initializers(m):
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def test_permuted_model_computes_the_same_and_only_initializers_move():
    m = _chain_model()
    p = onnx.ModelProto()
    p.CopyFrom(m)
    layers = _layers(p)
    done, notes = permute_rows(p, [(layers["pw1"], (1, 4), 0.5), (layers["pw2"], (1, 4), 0.5)])
    assert [d.name for d in done] == ["pw1", "pw2"], notes
    assert done[0].kept_after > done[0].kept_before
    assert done[0].readers == ["pw2"] and done[1].readers == ["fc"]
    x = np.random.default_rng(1).standard_normal((3, 8, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(_run(p, x), _run(m, x), rtol=1e-5, atol=1e-5)
    # same nodes, names, inputs, outputs; the initializers are permutations of the old ones
    assert [n.SerializeToString() for n in p.graph.node] == [n.SerializeToString() for n in m.graph.node]
    old, new = _initializers(m), _initializers(p)
    assert old.keys() == new.keys()
    for k in old:
        assert old[k].shape == new[k].shape
        np.testing.assert_array_equal(np.sort(old[k], axis=None), np.sort(new[k], axis=None))
    assert not np.array_equal(old["w1"], new["w1"])
    # everything pw1's channels pass through followed its rows (scalars did not move)
    order = [np.flatnonzero((old["w1"] == r).all(axis=(1, 2, 3)))[0] for r in new["w1"]]
    for k in ("b1", "bn_s", "bn_b", "bn_m", "bn_v", "wd", "bd"):
        np.testing.assert_array_equal(new[k], old[k][order])
    np.testing.assert_array_equal(new["scale"][0, :, 0, 0], old["scale"][0, order, 0, 0])
    np.testing.assert_array_equal(new["lo"], old["lo"])


@pytest.mark.parametrize("variant, why", [
    (dict(residual=True), "Add node 'add' mixes its channels"),
    (dict(output_mid=True), "graph output 'r1'"),
    (dict(shared=True), "'w1' is shared with another node"),
])
def test_open_regions_keep_their_order(variant, why):
    m = _chain_model(**variant)
    layers = _layers(m)
    name = "pw2" if variant.get("residual") else "pw1"
    region, reason = channel_region(m, layers[name])
    assert region is None and why in reason
    before = _initializers(m)
    done, notes = permute_rows(m, [(layers[name], (1, 4), 0.5)])
    assert done == [] and len(notes) == 1 and why in notes[0]
    for k, v in _initializers(m).items():
        np.testing.assert_array_equal(v, before[k])


def test_prune_permute_keeps_more_and_the_pattern_holds():
    m = _chain_model(c_mid=64)
    x = np.random.default_rng(2).standard_normal((2, 8, 9, 9)).astype(np.float32)
    plain, _ = prune(m, "block", 0.5, skip_first=False, min_params=0)
    perm, rep = prune(m, "block", 0.5, skip_first=False, min_params=0, permute=True)
    assert rep.settings["permute"] is True
    assert "pw1" in [p.name for p in rep.permuted]
    # pruned the same way, the permuted rows keep more of pw1's (BN-folded) weight mass
    kept_plain = (_initializers(plain)["w1"].reshape(64, -1) ** 2).sum()
    kept_perm = (_initializers(perm)["w1"].reshape(64, -1) ** 2).sum()
    assert kept_perm > kept_plain
    # 1x4 blocks over the (permuted) rows: every block all zero or all kept, half of them zero
    w = _initializers(perm)["w1"].reshape(16, 4, -1)
    nz = w != 0
    assert (nz.all(1) | ~nz.any(1)).all()
    np.testing.assert_array_equal(nz.any(1), block_mask(_initializers(perm)["w1"].reshape(64, -1), 0.5)
                                  .reshape(16, 4, -1).any(1))
    # pw1 alone pruned: its rows grouped by support keep the outputs closer to dense
    y = _run(m, x)
    only = dict(skip_first=False, min_params=0, include="pw1")
    err_plain = np.abs(_run(prune(m, "block", 0.5, **only)[0], x) - y).mean()
    err_perm = np.abs(_run(prune(m, "block", 0.5, permute=True, **only)[0], x) - y).mean()
    assert err_perm < 0.8 * err_plain


def test_prune_without_block_rows_permutes_nothing():
    m = _chain_model()
    a, _ = prune(m, "unstructured", 0.5, skip_first=False, min_params=0)
    b, rep = prune(m, "unstructured", 0.5, skip_first=False, min_params=0, permute=True)
    assert rep.permuted == []
    for k, v in _initializers(a).items():
        np.testing.assert_array_equal(v, _initializers(b)[k])


@settings(max_examples=40, deadline=None)
@given(groups=st.integers(2, 12), k=st.integers(1, 24), extra=st.integers(0, 3),
       sparsity=st.sampled_from([0.25, 0.5, 0.75, 0.9]), seed=st.integers(0, 2**16))
def test_row_grouping_is_a_permutation_that_never_keeps_less(groups, k, extra, sparsity, seed):
    rng = np.random.default_rng(seed)
    score = rng.exponential(size=(groups * 4 + extra, k)) ** 2
    order = row_grouping(score, 4, sparsity, seed=seed)
    assert sorted(order.tolist()) == list(range(len(score)))
    assert kept_share(score, 4, sparsity, order) >= kept_share(score, 4, sparsity)
    # rows past the last whole group stay where they are
    assert order[groups * 4:].tolist() == list(range(groups * 4, len(score)))


def test_row_grouping_finds_the_grouping_by_support():
    # 4 kinds of rows, each needing its own quarter of the columns, dealt round-robin: grouped
    # by kind, 75% block sparsity keeps every nonzero; in the given order it keeps ~a quarter
    K, per = 32, 8
    score = np.zeros((4 * per, K))
    for r in range(4 * per):
        kind = r % 4
        score[r, kind * 8:(kind + 1) * 8] = 1.0 + 0.01 * r
    assert kept_share(score, 4, 0.75) < 0.5
    order = row_grouping(score, 4, 0.75, sweeps=8)
    assert kept_share(score, 4, 0.75, order) == pytest.approx(1.0)


@pytest.mark.parametrize("name, permuted", [("mobilenet_v2", 18), ("bert_layer", 1)])
def test_zoo_models_compute_the_same_after_permutation(name, permuted):
    # MobileNetV2: every expand conv (through ReLU6 and the depthwise conv) and the last two
    # convs; BERT: the FFN's first MatMul (through its bias Add and the erf GELU)
    from sparsekit import models
    from sparsekit.fold_bn import fold_batchnorms
    from sparsekit.selection import select_layers, selection_rules
    m = models.build(name)
    fold_batchnorms(m, node_names(m.graph))
    p = onnx.ModelProto()
    p.CopyFrom(m)
    chosen = select_layers(p, selection_rules("block", 0.5), node_names(p.graph)).chosen
    done, _ = permute_rows(p, [(c, (1, 4), 0.5) for c, _ in chosen])
    assert len(done) == permuted
    sessions = [ort.InferenceSession(x.SerializeToString(), providers=["CPUExecutionProvider"])
                for x in (m, p)]
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sessions[0].get_inputs():
        shape = [d if isinstance(d, int) else 2 for d in i.shape]
        feeds[i.name] = (rng.integers(0, 10, shape).astype(np.int64) if "int" in i.type
                         else rng.standard_normal(shape).astype(np.float32))
    for a, b in zip(sessions[0].run(None, feeds), sessions[1].run(None, feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))


def test_a_grouped_conv_keeps_its_rows_in_their_groups():
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(_arr(rng, (16, 4, 1, 1)), "wg"),
             numpy_helper.from_array(_arr(rng, (8, 16, 1, 1)), "w2")]
    nodes = [helper.make_node("Conv", ["x", "wg"], ["g1"], name="grouped", group=2),
             helper.make_node("Relu", ["g1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="pw")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    region, why = channel_region(m, _layers(m)["grouped"])
    assert region is None and "grouped conv" in why
