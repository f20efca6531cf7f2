"""Models as other exporters write them (weights in Constant nodes, behind Cast from float16,
Identity, Transpose, Reshape, shared between layers, int8 through DequantizeLinear): each is
read through sparsekit.weights, prunes, converts and matches stock onnxruntime running the
pruned model; the input model is never modified."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsekit
from ort_helpers import IR_VERSION, assert_close, run_stock
from sparsekit.cli import main
from sparsekit.errors import SparsekitError
from sparsekit.graph import prunable_layers
from sparsekit.inspection import inspect
from sparsekit.weights import read_weights

FOLDED = ("Constant", "Identity", "Cast", "Transpose", "Reshape")


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=IR_VERSION)


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _w(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _const(out, arr, name=None):
    return helper.make_node("Constant", [], [out], name=name or f"const_{out}",
                            value=numpy_helper.from_array(np.asarray(arr), out + "_value"))


def _feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
        out[i.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def _block_pattern_holds(pruned, row):
    """At least the requested 80% of the 1x4 blocks (4 output rows x 1 input) are all zero."""
    layer = next(l for l in prunable_layers(pruned) if l.name == row.name)
    W = layer.matrix(pruned)
    z = (W == 0).reshape(layer.M // 4, 4, layer.K)
    return z.all(axis=1).mean() >= 0.79 and row.achieved >= 0.79


def _prune_and_convert(model, feeds=None, *, expect_sparse=1, **kw):
    """prune (1x4 blocks, 80%), convert, compare with stock onnxruntime; the reports."""
    before = model.SerializeToString()
    feeds = feeds or _feeds(model)
    # the folded copy computes what the input computes (stock onnxruntime on both)
    folded, _ = read_weights(model)
    assert_close(run_stock(folded, feeds), run_stock(model, feeds), 64)
    args = dict(min_params=0, skip_first=False)
    args.update(kw)
    pruned, prep = sparsekit.prune(model, "block", 0.8, **args)
    assert model.SerializeToString() == before           # the input is never modified
    assert prep.layers, prep.to_dict()
    for row in prep.layers:
        if row.shared_with is None:
            assert _block_pattern_holds(pruned, row), row
    pruned_bytes = pruned.SerializeToString()
    converted, crep = sparsekit.convert(pruned)
    assert pruned.SerializeToString() == pruned_bytes
    assert sum(r.decision == "sparse" for r in crep.layers) >= expect_sparse, crep.to_dict()
    got = sparsekit.session(converted).run(None, feeds)[0]
    assert_close(got, run_stock(pruned, feeds), 64)
    return pruned, prep, converted, crep


def _ops_reading_weights(model):
    """Op types of the producers of every Conv/Gemm/MatMul weight (initializers: none)."""
    prod = {o: n.op_type for n in model.graph.node for o in n.output}
    return {prod[n.input[1]] for n in model.graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in prod}


# ---------------------------------------------------------------------------------------------
# encodings


def test_constant_nodes_in_every_value_form():
    rng = np.random.default_rng(1)
    W1 = _w(rng, 16, 32)
    W2 = _w(rng, 32, 16)
    W3 = _w(rng, 32, 16)
    W3[rng.random(W3.shape) < 0.5] = 0     # stored as a sparse_value: its nonzeros
    nz = np.flatnonzero(W3)
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(W3.reshape(-1)[nz], "v"),
        numpy_helper.from_array(nz.astype(np.int64), "i"), list(W3.shape))
    Wg = _w(rng, 16, 16)                    # Gemm B [N, K] with transB=1
    nodes = [
        _const("w1", W1),                                                       # value
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Constant", [], ["w2flat"], value_floats=W2.reshape(-1).tolist()),
        helper.make_node("Constant", [], ["w2shape"], value_ints=[32, 16]),
        helper.make_node("Reshape", ["w2flat", "w2shape"], ["w2"]),            # value_floats
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
        helper.make_node("Constant", [], ["w3"], sparse_value=sparse),          # sparse_value
        helper.make_node("MatMul", ["r1", "w3"], ["h3"], name="mm3"),
        helper.make_node("Add", ["h2", "h3"], ["s"]),
        _const("wg", Wg),
        helper.make_node("Constant", [], ["bg"], value_floats=_w(rng, 16).tolist()),
        helper.make_node("Gemm", ["s", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    m = _model(nodes, [_vi("x", [4, 16])], [_vi("y", [4, 16])])
    folded, notes = read_weights(m)
    assert not _ops_reading_weights(folded)
    assert not any(n.op_type in FOLDED for n in folded.graph.node)   # nobody reads them now
    assert any("Constant-node weight(s) read as initializers" in n for n in notes)
    assert any("Reshape" in n for n in notes)
    _, prep, _, crep = _prune_and_convert(m, expect_sparse=3)
    assert {r.name for r in prep.layers} == {"mm1", "mm2", "mm3", "fc"}
    assert not prep.skipped and not crep.skipped


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16])
def test_cast_from_another_float_type(dtype):
    rng = np.random.default_rng(2)
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    Wc = _w(rng, 32, 16, 3, 3).astype(np_type)
    Wm = _w(rng, 32, 24).astype(np_type)
    nodes = [
        helper.make_node("Cast", ["wc_low"], ["wc"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        _const("wm_low", Wm),
        helper.make_node("Cast", ["wm_low"], ["wm"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["f", "wm"], ["y"], name="fc"),
    ]
    m = _model(nodes, [_vi("x", [1, 16, 6, 6])], [_vi("y", [1, 24])],
               [numpy_helper.from_array(Wc, "wc_low")])
    folded, notes = read_weights(m)
    inits = {t.name: t for t in folded.graph.initializer}
    assert inits["wc"].data_type == inits["wm"].data_type == TensorProto.FLOAT
    assert "wc_low" not in inits and not any(n.op_type == "Cast" for n in folded.graph.node)
    name = np.dtype(np_type).name
    assert any(f"{name} tensor(s) behind Cast stored as float32" in n for n in notes), notes
    _, prep, _, _ = _prune_and_convert(m, expect_sparse=2)
    assert any("Cast" in n for n in prep.notes)


def test_identity_keeps_a_tied_weight_one_tensor():
    rng = np.random.default_rng(3)
    W = _w(rng, 32, 32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm_direct"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Identity", ["w"], ["w_tied"]),
        helper.make_node("Identity", ["w_tied"], ["w_tied2"]),
        helper.make_node("MatMul", ["r", "w_tied2"], ["h2"], name="mm_tied"),
        _const("wc", _w(rng, 32, 16)),
        helper.make_node("Identity", ["wc"], ["wc_id"]),
        helper.make_node("MatMul", ["h2", "wc_id"], ["y"], name="mm_const"),
    ]
    m = _model(nodes, [_vi("x", [4, 32])], [_vi("y", [4, 16])],
               [numpy_helper.from_array(W, "w")])
    folded, _ = read_weights(m)
    weights = {n.name: n.input[1] for n in folded.graph.node if n.op_type == "MatMul"}
    assert weights == {"mm_direct": "w", "mm_tied": "w", "mm_const": "wc"}
    assert not any(n.op_type == "Identity" for n in folded.graph.node)
    _, prep, _, _ = _prune_and_convert(m, expect_sparse=2)
    rows = {r.name: r for r in prep.layers}
    assert rows["mm_tied"].shared_with == "mm_direct"       # pruned once: one mask for both
    assert "pruned once" in rows["mm_direct"].note


def test_transpose_and_reshape_of_constants():
    rng = np.random.default_rng(4)
    hwio = _w(rng, 3, 3, 8, 32)                   # tf2onnx: a conv kernel stored HWIO
    Wt = _w(rng, 24, 32)                          # [M, K] stored, MatMul reads [K, M]
    flat = _w(rng, 24, 4, 4)                      # reshaped to [K, M] by [0, -1]
    nodes = [
        _const("hwio", hwio),
        helper.make_node("Transpose", ["hwio"], ["wc"], perm=[3, 2, 0, 1]),
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Transpose", ["wt_mk"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["f", "wt"], ["h"], name="fc1"),
        helper.make_node("Reshape", ["flat", "shape"], ["wr"]),
        helper.make_node("MatMul", ["h", "wr"], ["y"], name="fc2"),
    ]
    m = _model(nodes, [_vi("x", [1, 8, 5, 5])], [_vi("y", [1, 16])],
               [numpy_helper.from_array(Wt, "wt_mk"), numpy_helper.from_array(flat, "flat"),
                numpy_helper.from_array(np.array([0, -1], np.int64), "shape")])
    folded, notes = read_weights(m)
    inits = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    np.testing.assert_array_equal(inits["wc"], hwio.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(inits["wt"], Wt.T)
    assert inits["wr"].shape == (24, 16)
    assert not ({"wt_mk", "flat", "shape"} & set(inits))     # only the folded nodes read them
    assert not folded.graph.node[0].op_type == "Constant"
    _prune_and_convert(m, expect_sparse=3)


def test_transposed_source_still_read_elsewhere_is_stored_apart():
    rng = np.random.default_rng(5)
    W = _w(rng, 16, 16)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["h", "wt"], ["y"], name="mm_t")]
    m = _model(nodes, [_vi("x", [2, 16])], [_vi("y", [2, 16])], [numpy_helper.from_array(W, "w")])
    folded, notes = read_weights(m)
    assert {t.name for t in folded.graph.initializer} == {"w", "wt"}
    assert any("pruned separately" in n for n in notes)
    _, prep, _, _ = _prune_and_convert(m, expect_sparse=2)
    assert all(r.shared_with is None for r in prep.layers)


# ---------------------------------------------------------------------------------------------
# shared weights


def test_two_convs_share_one_weight():
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "w"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["b", "ra"], ["y"])]
    m = _model(nodes, [_vi("x", [1, 16, 5, 5])], [_vi("y", [1, 16, 5, 5])],
               [numpy_helper.from_array(_w(rng, 16, 16, 3, 3), "w")])
    pruned, prep, converted, crep = _prune_and_convert(m, expect_sparse=2)
    rows = {r.name: r for r in prep.layers}
    assert rows["conv_b"].shared_with == "conv_a" and "conv_a" in rows["conv_b"].note
    assert prep.totals.params == 16 * 16 * 9                 # the shared tensor counted once


def test_matmul_and_gemm_share_one_weight_in_different_views():
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
             helper.make_node("Gemm", ["a", "w"], ["y"], name="gemm", transB=1)]
    m = _model(nodes, [_vi("x", [3, 32])], [_vi("y", [3, 32])],
               [numpy_helper.from_array(_w(rng, 32, 32), "w")])
    _, prep, _, _ = _prune_and_convert(m, expect_sparse=1)
    rows = {r.name: r for r in prep.layers}
    # the Gemm reads the matrix transposed: the mask's blocks are not its blocks
    assert rows["gemm"].shared_with == "mm" and rows["gemm"].pattern == "unstructured"


def test_weight_shared_with_a_gather_and_with_a_skipped_layer():
    rng = np.random.default_rng(8)
    E = _w(rng, 64, 32)                           # tied embedding [V, H]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"], name="embed"),
             helper.make_node("Gemm", ["emb", "E"], ["logits"], name="head", transB=1),
             helper.make_node("MatMul", ["emb", "W"], ["o1"], name="kept"),
             helper.make_node("MatMul", ["emb", "W"], ["o2"], name="excluded_one"),
             helper.make_node("Add", ["o1", "o2"], ["o"])]
    m = _model(nodes, [_vi("ids", [5], TensorProto.INT64)],
               [_vi("logits", [5, 64]), _vi("o", [5, 16])],
               [numpy_helper.from_array(E, "E"), numpy_helper.from_array(_w(rng, 32, 16), "W")])
    feeds = {"ids": np.array([0, 3, 9, 63, 7], np.int64)}
    pruned, prep, converted, crep = _prune_and_convert(m, feeds, expect_sparse=1,
                                                       exclude="excluded")
    rows = {r.name: r for r in prep.layers}
    assert "embed" in rows["head"].note                       # the Gather sees the pruned E
    assert any("excluded_one: skipped" in n and "kept pruned" in n for n in prep.notes)
    head = next(r for r in crep.layers if r.name == "head")
    assert head.decision == "sparse" and "embed" in head.note   # the dense E stays for Gather
    sess = sparsekit.session(converted)
    for got, want in zip(sess.run(None, feeds), onnx_run_all(pruned, feeds)):
        assert_close(got, want, 32)


def onnx_run_all(model, feeds):
    import onnxruntime as ort
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


# ---------------------------------------------------------------------------------------------
# refused per layer


def _dq_conv_model(rng, float_layers=True):
    q = rng.integers(-100, 100, (32, 16, 3, 3)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wdq"], name="dq"),
             helper.make_node("Conv", ["x", "wdq"], ["c"], name="qconv", pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(np.float32(0.01), "ws"),
             numpy_helper.from_array(np.int8(0), "wz")]
    out = "c"
    if float_layers:
        nodes += [helper.make_node("Relu", ["c"], ["r"]),
                  helper.make_node("Conv", ["r", "wf"], ["y"], name="fconv", pads=[1, 1, 1, 1])]
        inits.append(numpy_helper.from_array(_w(rng, 32, 32, 3, 3), "wf"))
        out = "y"
    return _model(nodes, [_vi("x", [1, 16, 6, 6])], [_vi(out, [1, 32, 6, 6])], inits)


def test_dequantized_weight_is_refused_and_the_rest_pruned():
    m = _dq_conv_model(np.random.default_rng(9))
    _, prep, _, crep = _prune_and_convert(m)
    assert [r.name for r in prep.layers] == ["fconv"]
    skipped = {s.name: s.reason for s in prep.skipped}
    assert "DequantizeLinear" in skipped["qconv"] and "int8" in skipped["qconv"]
    assert {s["name"]: s["reason"] for s in crep.skipped} == skipped   # one implementation
    assert prep.totals.layers_skipped == 1


def test_no_prunable_layer_names_the_reasons():
    rng = np.random.default_rng(10)
    with pytest.raises(SparsekitError, match=r"no prunable layer: 1 Conv weight is int8 "
                                             r"quantized \(DequantizeLinear\)"):
        sparsekit.prune(_dq_conv_model(rng, float_layers=False), min_params=0)
    mm = _model([helper.make_node("MatMulInteger", ["x", "w"], ["y"], name="mmi")],
                [_vi("x", [2, 16], TensorProto.UINT8)], [_vi("y", [2, 8], TensorProto.INT32)],
                [numpy_helper.from_array(rng.integers(-5, 5, (16, 8)).astype(np.int8), "w")])
    with pytest.raises(SparsekitError, match="1 MatMulInteger node is an int8 quantized op"):
        sparsekit.prune(mm)
    _, crep = sparsekit.convert(mm)
    assert crep.skipped[0]["reason"] == "int8 quantized op: not supported (float32 only)"


def test_computed_and_input_weights_are_refused_with_the_reason():
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("Mul", ["wa", "scale"], ["wm"], name="scale_w"),
             helper.make_node("MatMul", ["x", "wm"], ["a"], name="computed"),
             helper.make_node("MatMul", ["a", "w_in"], ["b"], name="from_input"),
             helper.make_node("MatMul", ["b", "w"], ["y"], name="ok")]
    m = _model(nodes, [_vi("x", [2, 16]), _vi("w_in", [16, 16])], [_vi("y", [2, 16])],
               [numpy_helper.from_array(_w(rng, 16, 16), "wa"),
                numpy_helper.from_array(np.float32(2.0), "scale"),
                numpy_helper.from_array(_w(rng, 16, 16), "w")])
    pruned, prep = sparsekit.prune(m, min_params=0)
    skipped = {s.name: s.reason for s in prep.skipped}
    assert skipped == {"computed": "the weight is computed at run time (by Mul)",
                       "from_input": "the weight is a graph input, not a constant"}
    assert [r.name for r in prep.layers] == ["ok"]


# ---------------------------------------------------------------------------------------------
# a paddle2onnx-like network: every weight, bias and BatchNormalization parameter a Constant


def _paddle_like(seed=12):
    rng = np.random.default_rng(seed)
    nodes, cur, C = [], "x", 8
    for i, M in enumerate([16, 32, 32]):
        nodes.append(_const(f"conv{i}.w", _w(rng, M, C, 3, 3) * 0.3))
        nodes.append(helper.make_node("Conv", [cur, f"conv{i}.w"], [f"c{i}"], name=f"conv{i}",
                                      pads=[1, 1, 1, 1]))
        for p, v in (("scale", rng.uniform(0.5, 1.5, M)), ("bias", rng.standard_normal(M)),
                     ("mean", rng.standard_normal(M) * 0.1), ("var", rng.uniform(0.5, 2, M))):
            nodes.append(_const(f"bn{i}.{p}", v.astype(np.float32)))
        nodes.append(helper.make_node(
            "BatchNormalization", [f"c{i}"] + [f"bn{i}.{p}" for p in ("scale", "bias", "mean", "var")],
            [f"b{i}"], name=f"bn{i}", epsilon=1e-5))
        nodes.append(helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}"))
        cur, C = f"r{i}", M
    nodes += [helper.make_node("GlobalAveragePool", [cur], ["p"]),
              helper.make_node("Flatten", ["p"], ["f"]),
              _const("fc.w", _w(rng, 32, 16)),
              helper.make_node("MatMul", ["f", "fc.w"], ["mm"], name="fc"),
              _const("fc.b", _w(rng, 16)),
              helper.make_node("Add", ["mm", "fc.b"], ["y"])]
    return _model(nodes, [_vi("x", [1, 8, 8, 8])], [_vi("y", [1, 16])], opset=12)


def test_paddle2onnx_like_network():
    m = _paddle_like()
    assert not m.graph.initializer
    pruned, prep, converted, crep = _prune_and_convert(m, expect_sparse=3)
    assert len(prep.folded_bn) == 3                     # the BN parameters were read too
    assert {r.name for r in prep.layers} == {"conv0", "conv1", "conv2", "fc"}
    assert not any(n.op_type == "Constant" for n in pruned.graph.node)
    assert any("Constant-node weight(s) read as initializers" in n for n in prep.notes)


def test_paddle2onnx_like_network_through_the_cli(tmp_path, capsys):
    src, out, conv = tmp_path / "model.onnx", tmp_path / "pruned.onnx", tmp_path / "sparse.onnx"
    onnx.save(_paddle_like(), src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert main(["prune", str(src), "-o", str(out), "--sparsity", "0.8", "--min-params", "0"]) == 0
    assert main(["convert", str(out), "-o", str(conv)]) == 0
    capsys.readouterr()
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    feeds = _feeds(_paddle_like())
    pruned = onnx.load(str(out))
    got = sparsekit.session(str(conv)).run(None, feeds)[0]
    assert_close(got, run_stock(pruned, feeds), 64)
    assert any(n.domain == "ai.sparsekit" for n in onnx.load(str(conv)).graph.node)


def test_inspect_reads_constant_weights():
    rep = inspect(_paddle_like())
    assert [l.name for l in rep.layers] == ["conv0", "conv1", "conv2", "fc"]
    assert any("Constant-node" in n for n in rep.notes)
    rep = inspect(_dq_conv_model(np.random.default_rng(13)))
    assert [s["name"] for s in rep.skipped] == ["qconv"]
