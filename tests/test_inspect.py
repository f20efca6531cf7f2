"""sparsekit inspect: per-layer shape, sparsity, pattern, format and bytes of dense, pruned and
converted models; the numbers checked against the models' own initializers."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsekit
from sparsekit.cli import main
from sparsekit.convert import convert
from sparsekit.graph import prunable_layers
from sparsekit.inspection import inspect
from sparsekit.models import build

BERT = dict(seq=8, hidden=64, heads=2, ffn=128)
MBV2 = dict(resolution=32, width=0.35, num_classes=10)


def _init_bytes(model):
    return {t.name: numpy_helper.to_array(t).nbytes for t in model.graph.initializer}


def test_dense_model():
    m = build("mobilenet_v2", **MBV2)
    rep = inspect(m)
    layers = list(prunable_layers(m))
    assert [l.name for l in rep.layers] == [l.name for l in layers]
    sizes = _init_bytes(m)
    for info, layer in zip(rep.layers, layers):
        assert info.op == "Conv" or info.op == "Gemm"
        assert info.shape == [layer.M, layer.K] and info.sparsity == 0.0 and info.format is None
        assert info.pattern == ("depthwise" if layer.depthwise else "dense")
        assert info.bytes == info.dense_bytes == sizes[layer.weight]
    t = rep.totals
    assert t["converted"] == 0 and t["sparsity"] == 0.0
    assert t["params"] == sum(l.M * l.K for l in layers)
    assert t["weight_bytes"] == sum(sizes[l.weight] for l in layers)
    assert t["model_bytes"] == m.ByteSize()


@pytest.mark.parametrize("kw,block4,banked", [
    (dict(pattern="block"), True, False),
    (dict(pattern="bank", bank_size=32), False, True),
    (dict(pattern="bank", bank_size=16, block="1x4"), True, True),
    (dict(pattern="unstructured"), False, False),
])
def test_pruned_model_patterns(kw, block4, banked):
    pruned, prep = sparsekit.prune(build("bert_layer", **BERT), sparsity=0.8, min_params=0, **kw)
    rep = inspect(pruned)
    by_name = {l.name: l for l in rep.layers}
    assert set(by_name) == {r.name for r in prep.layers}
    for r in prep.layers:
        info = by_name[r.name]
        assert info.sparsity == pytest.approx(r.achieved)
        assert info.block_1x4 == block4, info
        assert info.bank_size == (kw.get("bank_size") if banked else None), info
        assert ("1x4 blocks" in info.pattern) == block4
        assert ("bank-balanced" in info.pattern) == banked
        if not block4 and not banked:
            assert info.pattern == "unstructured"
        assert info.format is None and info.bytes == info.dense_bytes


def test_converted_model_formats_bytes_and_sparsity():
    pruned, _ = sparsekit.prune(build("mobilenet_v2", **MBV2), pattern="bank", block="1x4",
                                sparsity=0.85, min_params=0)
    sparse, crep = convert(pruned)
    before = {l.name: l for l in inspect(pruned).layers}
    rep = inspect(sparse)
    decisions = {l.name: l for l in crep.layers}
    assert [l.name for l in rep.layers] == list(before)
    sizes = _init_bytes(sparse)
    nodes = {n.name: n for n in sparse.graph.node}
    for info in rep.layers:
        d = decisions[info.name]
        assert info.sparsity == pytest.approx(before[info.name].sparsity)
        assert info.shape == before[info.name].shape
        assert info.dense_bytes == before[info.name].dense_bytes
        if d.decision == "dense":
            assert info.format is None and info.op == "Conv"
            continue
        assert info.format == d.format
        node = nodes[info.name]
        assert info.op == node.op_type
        packed = node.input[1:2] if node.op_type == "DepthwiseConv" else node.input[1:4]
        assert info.bytes == sum(sizes[x] for x in packed if x)
        if d.decision == "sparse":
            assert info.bytes == d.sparse_bytes
            assert info.block_1x4 and info.bank_size is not None
    t = rep.totals
    assert t["converted"] == crep.totals["converted"] + crep.totals["depthwise"]
    assert t["weight_bytes"] == crep.totals["weight_bytes_after"]
    assert t["dense_weight_bytes"] == crep.totals["weight_bytes_before"]
    assert t["sparsity"] == pytest.approx(inspect(pruned).totals["sparsity"])


def test_bank_size_48_from_zeros_and_fp16_weights():
    rng = np.random.default_rng(0)
    M, K, bank, keep = 32, 144, 48, 6
    mask = np.zeros((M, K), dtype=bool)
    for r in range(M):
        for lo in range(0, K, bank):
            mask[r, lo + rng.choice(bank, keep, replace=False)] = True
    W = np.where(mask, rng.uniform(0.5, 1.5, (M, K)), 0).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["a"], name="fc", transB=1),
             helper.make_node("Cast", ["a"], ["a16"], to=TensorProto.FLOAT16),
             helper.make_node("MatMul", ["a16", "w16"], ["y"], name="half")]
    W16 = (rng.standard_normal((M, 8)) * (rng.random((M, 8)) < 0.5)).astype(np.float16)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 8])],
                          [numpy_helper.from_array(W, "w"), numpy_helper.from_array(W16, "w16")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    fc, half = inspect(m).layers
    assert fc.bank_size == 48 and fc.pattern == "bank-balanced (bank 48, keep 6)"
    assert fc.sparsity == pytest.approx(1 - keep / bank)
    assert half.dtype == "float16" and half.bytes == W16.nbytes and half.dense_bytes == W16.size * 4
    assert half.sparsity == pytest.approx((W16 == 0).mean())


def test_corrupt_packed_weights_are_reported_not_fatal():
    rng = np.random.default_rng(1)
    W = (rng.standard_normal((8, 16)) * (rng.random((8, 16)) < 0.3)).astype(np.float32)
    node, inits = sparsekit.make_sparse_gemm_node("fc", "x", "y", W, fmt="bsr", block=1)
    for t in inits:
        if t.name == "fc.indices":
            t.CopyFrom(numpy_helper.from_array(
                np.full(numpy_helper.to_array(t).shape, 999, np.uint16), t.name))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), sparsekit.format.opset_import()],
                          ir_version=8)
    (info,) = inspect(m).layers
    assert info.op == "SparseGemm" and info.pattern.startswith("invalid packed weights")


def test_cli_inspect_json_and_table(tmp_path, capsys):
    pruned, _ = sparsekit.prune(build("bert_layer", **BERT), sparsity=0.9, min_params=0)
    sparse, _ = convert(pruned)
    path = tmp_path / "sparse.onnx"
    onnx.save(sparse, str(path))
    assert main(["inspect", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["totals"]["converted"] == 6 == len(rep["layers"])
    assert {l["format"] for l in rep["layers"]} == {"bsr 1x4"}
    assert all(l["block_1x4"] for l in rep["layers"])
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "SparseGemm" in out and "bsr 1x4" in out
    bad = tmp_path / "bad.onnx"
    bad.write_text("nope")
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "not a valid ONNX model" in err[0]
