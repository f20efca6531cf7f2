"""convert's activation layout (issue 20): chains of DepthwiseConv / 1x1 SparseConv ops in
8-channel blocks with Reorders at their edges, against stock onnxruntime on the pruned model."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

import sparsekit
from sparsekit.cli import main
from sparsekit.convert import convert
from sparsekit.convert.layout import find_chains
from sparsekit.errors import SparsekitError
from sparsekit.inspection import inspect
from test_convert import (ZOO, assert_close, assert_valid_output, block_mask, build, feeds_for,
                          init, masked, model_of, run_sparse, run_stock, vi, zoo)


def _blocked_chains(report):
    return [c for c in report.chains if c.layout == "NCHWc8"]


def _check_blocked_graph(model, report):
    """Every node of a blocked chain carries layout NCHWc8; one Reorder per chain edge but
    those where the conv making the input writes blocks itself (a head: a SparseConv reading
    NCHW and writing NCHWc8, under the replaced conv's name)."""
    by_name = {n.name: n for n in model.graph.node}
    for c in _blocked_chains(report):
        merged = {part: f for f in c.fused for part in f.split("+")}
        for name in c.nodes:
            attrs = {a.name: a for a in by_name[merged.get(name, name)].attribute}
            assert helper.get_attribute_value(attrs["layout"]) == b"NCHWc8", name
        for f in c.fused:   # an expansion and its depthwise conv, both halves blocked
            attrs = {a.name: helper.get_attribute_value(a) for a in by_name[f].attribute}
            assert by_name[f].op_type == "SparseConvDepthwise"
            assert attrs["layout"] == attrs["dw_layout"] == b"NCHWc8"
    reorders = [n for n in model.graph.node if n.op_type == "Reorder"]
    assert len(reorders) == sum(len(c.inputs) - len(c.heads) + len(c.outputs)
                                for c in _blocked_chains(report))
    for c in _blocked_chains(report):
        for x, name in c.heads.items():
            head = by_name[name]
            assert head.op_type == "SparseConv" and head.output[0] != x
            attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
            assert attrs["layout"] == b"NCHWc8" and attrs["input_layout"] == b"NCHW"
    for c in report.chains:
        if c.layout == "NCHW":
            for name in c.nodes:
                assert all(a.name != "layout" for a in by_name[name].attribute)
        else:  # a GlobalAveragePool alone reading an output: now its Reorder, pooling
            for y, name in c.pools.items():
                attrs = {a.name: helper.get_attribute_value(a) for a in by_name[name].attribute}
                assert by_name[name].op_type == "Reorder" and attrs["pool"] == b"global_average"
                assert not any(y in n.input for n in model.graph.node)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "efficientnet_lite0",
                                  "resnet50"])
def test_zoo_blocked_chains_match_stock_onnxruntime(name):
    pruned, _ = sparsekit.prune(zoo(name), sparsity=0.85, min_params=0)
    before = pruned.SerializeToString()
    nchw, rep_nchw = convert(pruned)
    blocked, rep = convert(pruned, layout="NCHWc8")
    assert pruned.SerializeToString() == before
    assert rep_nchw.settings["layout"] == "NCHW" and not _blocked_chains(rep_nchw)
    assert not any(c.pools for c in rep_nchw.chains)      # NCHW: the pooling node stays
    assert not any(n.op_type == "Reorder" for n in nchw.graph.node)
    assert [c.nodes for c in rep.chains] == [c.nodes for c in rep_nchw.chains]
    assert rep.chains and all(c.layout == "NCHWc8" for c in rep.chains)
    assert_valid_output(pruned, blocked)
    _check_blocked_graph(blocked, rep)
    if name != "resnet50":  # the whole backbone after the stem is one chain: in once, out once,
        # and the stem (a dense Conv + Relu/Clip) writes its input in blocks: no Reorder in
        assert len(rep.chains) == 1 and len(rep.chains[0].inputs) == 1
        assert rep.chains[0].outputs and len(rep.chains[0].outputs) == 1
        stem = next(n for n in pruned.graph.node if n.op_type == "Conv")
        assert rep.chains[0].heads == {rep.chains[0].inputs[0]: stem.name}
        assert sum(n.op_type == "Reorder" for n in blocked.graph.node) == 1
        # ... and that one Reorder is the classifier's pooling
        assert list(rep.chains[0].pools) == rep.chains[0].outputs
        assert not any(n.op_type == "GlobalAveragePool" for n in blocked.graph.node)
        assert not any(n.op_type == "Conv" for n in blocked.graph.node)
        row = next(r for r in rep.layers if r.name == stem.name)
        assert "NCHWc8" in row.note
    else:  # the 3x3 and strided SparseConvs before 1x1 chains write their blocks
        assert any(c.heads for c in rep.chains)
    feeds = feeds_for(pruned)
    for t in (1, 2):
        assert_close(run_stock(pruned, feeds, t), run_sparse(blocked, feeds, t))


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_zoo_expansions_merged_on_large_planes_match_stock(name):
    """At 64x64 the first blocks' planes are 32x32 (>= FUSE_MIN_PIXELS): their expansion and
    depthwise conv become one SparseConvDepthwise, the smaller planes' stay two nodes; the model
    equals stock onnxruntime at 1 and 2 threads, and inspect lists each merged node's two
    layers."""
    m = build(name, **dict(ZOO[name], resolution=64))
    pruned, _ = sparsekit.prune(m, sparsity=0.85, min_params=0)
    blocked, rep = convert(pruned, layout="NCHWc8")
    fused = [n for n in blocked.graph.node if n.op_type == "SparseConvDepthwise"]
    assert fused and [n.name for n in fused] == [f for c in rep.chains for f in c.fused]
    assert any(n.op_type == "DepthwiseConv" for n in blocked.graph.node)   # the small planes
    assert "merged with their depthwise conv" in rep.chains[0].reason
    _check_blocked_graph(blocked, rep)
    layers = {l.name: l for l in inspect(blocked).layers}
    for n in fused:
        assert layers[f"{n.name}:1x1"].op == "SparseConv"
        assert layers[f"{n.name}:depthwise"].pattern == "depthwise"
    feeds = feeds_for(pruned)
    for t in (1, 2):
        assert_close(run_stock(pruned, feeds, t), run_sparse(blocked, feeds, t))
    # merge=False (--no-merge): the same chains, every expansion its own node
    unmerged, rep_u = convert(pruned, layout="NCHWc8", merge=False)
    assert rep_u.settings["merge"] is False and not any(c.fused for c in rep_u.chains)
    assert not any(n.op_type == "SparseConvDepthwise" for n in unmerged.graph.node)
    assert sum(n.op_type == "DepthwiseConv" for n in unmerged.graph.node) == \
        sum(n.op_type == "DepthwiseConv" for n in blocked.graph.node) + len(fused)
    assert_close(run_stock(pruned, feeds), run_sparse(unmerged, feeds))


def test_cli_no_merge(tmp_path, capsys):
    src = tmp_path / "p.onnx"
    pruned, _ = sparsekit.prune(build("mobilenet_v2", **dict(ZOO["mobilenet_v2"], resolution=64)),
                                sparsity=0.85, min_params=0)
    onnx.save(pruned, src)
    for flags, merged in (([], True), (["--no-merge"], False)):
        out = tmp_path / f"s{len(flags)}.onnx"
        assert main(["convert", str(src), "-o", str(out), "--layout", "NCHWc8", "--json"]
                    + flags) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["settings"]["merge"] is merged
        assert bool(rep["chains"][0]["fused"]) is merged
        ops = [n.op_type for n in onnx.load(out).graph.node]
        assert ("SparseConvDepthwise" in ops) is merged


def _edge_model(rng, stride: int, C: int):
    """stem 3x3 Conv -> [1x1 -> dw 3x3 -> 1x1 (+ residual at stride 1)] with a chain-internal
    tensor also read outside the chain (ReduceMean) and a chain tensor that is a graph output
    and is read outside too (GlobalAveragePool)."""
    M1 = C + 4
    nodes = [helper.make_node("Conv", ["X", "w0"], ["a0"], pads=[1, 1, 1, 1], name="stem"),
             helper.make_node("Relu", ["a0"], ["A"]),
             helper.make_node("Conv", ["A", "w1", "b1"], ["b0"], name="pw1"),
             helper.make_node("Relu", ["b0"], ["B"]),
             helper.make_node("Conv", ["B", "wd"], ["c0"], group=M1, strides=[stride] * 2,
                              pads=[1, 1, 1, 1], name="dw"),
             helper.make_node("Clip", ["c0", "lo", "hi"], ["Cc"]),
             helper.make_node("Conv", ["Cc", "w2", "b2"], ["d0" if stride == 1 else "D"],
                              name="pw2")]
    if stride == 1:
        nodes.append(helper.make_node("Add", ["d0", "A"], ["D"]))
    nodes += [helper.make_node("ReduceMean", ["B"], ["side"], axes=[2, 3], keepdims=0),
              helper.make_node("GlobalAveragePool", ["D"], ["pool"])]
    inits = [init("w0", rng.standard_normal((C, 3, 3, 3)).astype(np.float32) * 0.3),
             init("w1", masked(rng, (M1, C, 1, 1), block_mask(rng, M1, C, 0.4)[..., None, None])),
             init("b1", rng.standard_normal(M1).astype(np.float32)),
             init("wd", rng.standard_normal((M1, 1, 3, 3)).astype(np.float32) * 0.3),
             init("lo", np.float32(0.0)), init("hi", np.float32(6.0)),
             init("w2", masked(rng, (C, M1, 1, 1), block_mask(rng, C, M1, 0.4)[..., None, None])),
             init("b2", rng.standard_normal(C).astype(np.float32))]
    H = 9
    OH = (H - 1) // stride + 1
    return model_of(nodes, [vi("X", [1, 3, H, H])],
                    [vi("D", [1, C, OH, OH]), vi("side", [1, M1]), vi("pool", [1, C, 1, 1])],
                    inits, opset=17)


@pytest.mark.parametrize("C", [12, 16, 20])
@pytest.mark.parametrize("stride", [1, 2])
def test_chain_edges_inside_reads_and_graph_outputs(stride, C):
    model = _edge_model(np.random.default_rng(C + stride), stride, C)
    blocked, rep = convert(model, layout="NCHWc8")
    assert [c.nodes for c in rep.chains] == [["pw1", "dw", "pw2"]]
    chain = rep.chains[0]
    assert chain.inputs == ["A"]                         # X and the residual: one Reorder
    assert sorted(chain.outputs) == ["B", "D"]           # read outside / a graph output
    assert not chain.pools       # D is a graph output: its GlobalAveragePool stays
    assert sum(n.op_type == "GlobalAveragePool" for n in blocked.graph.node) == 1
    _check_blocked_graph(blocked, rep)
    assert_valid_output(model, blocked)
    feeds = feeds_for(model)
    assert_close(run_stock(model, feeds), run_sparse(blocked, feeds))


def test_chain_reading_a_tensor_made_between_its_nodes():
    """pwA -> pwB (+ R), R made by a node that sits between them in the graph: the rewritten
    chain is placed where pwA was, so the graph is sorted again."""
    rng = np.random.default_rng(3)
    C = 16
    nodes = [helper.make_node("Conv", ["X", "wa"], ["Y"], name="pwA"),
             helper.make_node("Neg", ["X"], ["R"], name="neg"),
             helper.make_node("Conv", ["Y", "wb"], ["z0"], name="pwB"),
             helper.make_node("Add", ["z0", "R"], ["Z"])]
    inits = [init(n, masked(rng, (C, C, 1, 1), block_mask(rng, C, C, 0.3)[..., None, None]))
             for n in ("wa", "wb")]
    model = model_of(nodes, [vi("X", [1, C, 5, 7])], [vi("Z", [1, C, 5, 7])], inits)
    blocked, rep = convert(model, layout="NCHWc8")
    assert [c.nodes for c in rep.chains] == [["pwA", "pwB"]]
    assert sorted(rep.chains[0].inputs) == ["R", "X"]
    order = [n.name for n in blocked.graph.node]
    assert order.index("neg") < order.index("pwB")
    _check_blocked_graph(blocked, rep)
    onnx.checker.check_model(blocked)
    feeds = feeds_for(model)
    assert_close(run_stock(model, feeds), run_sparse(blocked, feeds))


def test_ops_that_cannot_run_blocked_split_chains():
    """A 3x3 SparseConv and a 1x1 one with stride 2 are not blockable: they end chains."""
    pruned, _ = sparsekit.prune(zoo("resnet50"), sparsity=0.85, min_params=0)
    nchw, _ = convert(pruned)
    in_chain = {n for c in find_chains(nchw) for n in c.nodes}
    for n in nchw.graph.node:
        if n.op_type != "SparseConv":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        one_by_one = list(attrs["kernel_shape"]) == [1, 1] and list(attrs["strides"]) == [1, 1]
        assert (n.name in in_chain) == (one_by_one and attrs["block"] == 4), n.name


def test_auto_keeps_what_was_timed_faster():
    pruned, _ = sparsekit.prune(zoo("mobilenet_v2"), sparsity=0.85, min_params=0)
    model, rep = convert(pruned, layout="auto", threads=1)
    assert rep.chains
    for c in rep.chains:
        assert c.nchw_ms is not None and c.blocked_ms is not None
        assert (c.layout == "NCHWc8") == (c.blocked_ms < c.nchw_ms), c
    _check_blocked_graph(model, rep)
    feeds = feeds_for(pruned)
    assert_close(run_stock(pruned, feeds), run_sparse(model, feeds))
    # autotune implies auto; an explicit layout wins over it
    _, rep_at = convert(pruned, autotune=True, threads=1, layout="NCHW")
    assert rep_at.settings["layout"] == "NCHW" and not _blocked_chains(rep_at)


def test_bad_layout_is_one_error():
    with pytest.raises(SparsekitError, match="layout must be one of auto, NCHW, NCHWc8"):
        convert(zoo("mobilenet_v1"), layout="NHWC")


def test_cli_layout_and_json_chains(tmp_path, capsys):
    src = tmp_path / "p.onnx"
    pruned, _ = sparsekit.prune(zoo("mobilenet_v1"), sparsity=0.9, min_params=0)
    onnx.save(pruned, src)
    out = tmp_path / "s.onnx"
    assert main(["convert", str(src), "-o", str(out), "--layout", "NCHWc8", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["settings"]["layout"] == "NCHWc8"
    assert [c["layout"] for c in rep["chains"]] == ["NCHWc8"]
    assert set(rep["chains"][0]) >= {"nodes", "inputs", "outputs", "heads", "nchw_ms",
                                     "blocked_ms"}
    assert list(rep["chains"][0]["heads"].values()) == ["conv1"]
    model = onnx.load(out)
    assert sum(n.op_type == "Reorder" for n in model.graph.node) == 1
    feeds = feeds_for(pruned)
    assert_close(run_stock(pruned, feeds), run_sparse(model, feeds))
    # the table names the chain and its layout; a layout click does not know is refused
    assert main(["convert", str(src), "-o", str(out), "--layout", "NCHWc8", "--force"]) == 0
    assert "chains (activation layout)" in capsys.readouterr().out
    assert main(["convert", str(src), "-o", str(tmp_path / "t.onnx"), "--layout", "NHWC"]) != 0
    assert "NHWC" in capsys.readouterr().err and not (tmp_path / "t.onnx").exists()


def _first_block_model(rng, act="Relu"):
    """MobileNetV2's first block in small: a dense stem, a depthwise conv, a dense 1x1 conv too
    small for prune (no zeros), then a pruned 1x1 conv; ``act`` after the depthwise conv."""
    stem = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    dw = rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.3
    pw = rng.standard_normal((16, 8, 1, 1)).astype(np.float32) * 0.3
    sp = masked(rng, (32, 16), block_mask(rng, 32, 16, 0.3)).reshape(32, 16, 1, 1) * 0.3
    nodes = [helper.make_node("Conv", ["x", "stem"], ["s"], name="stem", strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["s"], ["sr"]),
             helper.make_node("Conv", ["sr", "dw"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node(act, ["d"], ["dr"]),
             helper.make_node("Conv", ["dr", "pw"], ["p"], name="pw"),
             helper.make_node("Conv", ["p", "sp"], ["y"], name="sp")]
    return model_of(nodes, [vi("x", [1, 3, 18, 18])], [vi("y", [1, 32, 9, 9])],
                    [init("stem", stem), init("dw", dw), init("pw", pw), init("sp", sp)])


@pytest.mark.parametrize("layout", ["NCHW", "NCHWc8"])
def test_a_dense_1x1_joins_a_depthwise_conv_to_the_sparse_backbone(layout):
    m = _first_block_model(np.random.default_rng(7))
    out, rep = convert(m, layout=layout)
    assert_valid_output(m, out)
    rows = {r.name: r for r in rep.layers}
    assert rows["pw"].decision == "sparse" and "between a depthwise conv" in rows["pw"].reason
    assert rows["dw"].decision == "depthwise"
    assert rows["stem"].decision == "dense"
    if layout == "NCHWc8":   # one chain from the depthwise conv on, the stem writing its blocks
        (chain,) = rep.chains
        assert chain.nodes[:3] == ["dw", "pw", "sp"] and chain.heads == {"sr": "stem"}
    feeds = feeds_for(m)
    assert_close(run_stock(m, feeds), run_sparse(out, feeds))


def test_a_dense_1x1_after_what_a_depthwiseconv_cannot_fuse_stays_dense():
    # DepthwiseConv fuses Relu/Clip, not HardSwish: the depthwise conv would stay onnxruntime's
    # anyway, so packing the 1x1 conv whole would buy nothing
    m = _first_block_model(np.random.default_rng(7), act="HardSwish")
    _, rep = convert(m, layout="NCHWc8")
    rows = {r.name: r for r in rep.layers}
    assert rows["pw"].reason == "no zeros" and rows["dw"].decision == "dense"
    _, rep = convert(_first_block_model(np.random.default_rng(7)), exclude="dw")
    assert {r.name: r for r in rep.layers}["pw"].reason == "no zeros"


def test_a_dense_1x1_without_a_depthwise_conv_before_it_stays_dense():
    rng = np.random.default_rng(8)
    pw = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)
    sp = masked(rng, (32, 16), block_mask(rng, 32, 16, 0.3)).reshape(32, 16, 1, 1)
    m = model_of([helper.make_node("Conv", ["x", "pw"], ["p"], name="pw"),
                  helper.make_node("Relu", ["p"], ["pr"]),
                  helper.make_node("Conv", ["pr", "sp"], ["y"], name="sp")],
                 [vi("x", [1, 8, 6, 6])], [vi("y", [1, 32, 6, 6])], [init("pw", pw), init("sp", sp)])
    _, rep = convert(m)
    assert {r.name: r for r in rep.layers}["pw"].reason == "no zeros"
