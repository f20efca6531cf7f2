"""sparsekit.convert: outputs equal the pruned dense model (stock onnxruntime) on the whole zoo,
patterns found from zeros alone, threshold and autotune decisions, fusion rules, file size, and
every bad input through the Python API and the CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import importlib

import sparsekit
from sparsekit.cli import main
from sparsekit.convert import LSTM_MAX_DENSITY, CONVERTED_KEY, DEFAULT_MAX_DENSITY, convert
from sparsekit.format import ragged_keep
from sparsekit.sequence import lstm_layers
from sparsekit.errors import SparsekitError
from sparsekit.graph import prunable_layers
from sparsekit.models import build

from sparsekit.recipe import METADATA_KEY as RECIPE_KEY

convert_autotune = importlib.import_module("sparsekit.convert.autotune")

IR = 8
ZOO = {
    "mobilenet_v1": dict(resolution=32, width=0.25, num_classes=10),
    "mobilenet_v2": dict(resolution=32, width=0.35, num_classes=10),
    "efficientnet_lite0": dict(resolution=32, width=0.25, num_classes=10),
    "resnet50": dict(resolution=32, width=0.125, num_classes=10),
    "bert_layer": dict(seq=8, hidden=64, heads=2, ffn=128, symbolic_seq=True),
    "lstm_lm": dict(hidden=32, vocab=100, seq=4, layers=2, with_state=True),
}
# name -> prune keyword arguments
PATTERNS = {
    "block": dict(pattern="block"),
    "bank": dict(pattern="bank"),
    "unstructured": dict(pattern="unstructured"),
    "bank1x4": dict(pattern="bank", block="1x4"),
}

_zoo_cache: dict = {}


def zoo(name):
    if name not in _zoo_cache:
        _zoo_cache[name] = build(name, **ZOO[name])
    return _zoo_cache[name]


# ---------------------------------------------------------------------------------------------
# helpers


def feeds_for(model, rng=None, overrides=None):
    """Random inputs for every graph input; symbolic dims from `overrides` (default 2)."""
    rng = rng or np.random.default_rng(0)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (overrides or {}).get(d.dim_param, 2)
                for d in tt.shape.dim]
        if tt.elem_type == TensorProto.FLOAT:
            feeds[i.name] = rng.standard_normal(dims).astype(np.float32)
        elif tt.elem_type == TensorProto.FLOAT16:
            feeds[i.name] = rng.standard_normal(dims).astype(np.float16)
        else:
            feeds[i.name] = rng.integers(0, 10, dims).astype(
                helper.tensor_dtype_to_np_dtype(tt.elem_type))
    return feeds


def run_stock(model, feeds, threads=1):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def run_sparse(model, feeds, threads=1):
    return sparsekit.session(model, threads=threads).run(None, feeds)


def assert_close(ref, out):
    assert len(ref) == len(out)
    for a, b in zip(ref, out):
        assert a.shape == b.shape
        scale = float(np.abs(a).max()) or 1.0
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale)


def assert_same_outputs(dense, sparse, threads=(1,), overrides=None):
    feeds = feeds_for(dense, overrides=overrides)
    for t in threads:
        assert_close(run_stock(dense, feeds, t), run_sparse(sparse, feeds, t))


def assert_valid_output(src, out):
    """checker passes; inputs, outputs (with shapes) and metadata kept; no dangling value_info."""
    onnx.checker.check_model(out)
    assert any(o.domain == "ai.sparsekit" for o in out.opset_import) or \
        not any(n.domain == "ai.sparsekit" for n in out.graph.node)
    inits_src = {t.name for t in src.graph.initializer}
    inputs = [i.SerializeToString() for i in src.graph.input if i.name not in inits_src]
    inits_out = {t.name for t in out.graph.initializer}
    assert [i.SerializeToString() for i in out.graph.input if i.name not in inits_out] == inputs
    assert [o.SerializeToString() for o in out.graph.output] == \
        [o.SerializeToString() for o in src.graph.output]
    produced = {o for n in out.graph.node for o in n.output}
    assert all(v.name in produced for v in out.graph.value_info)
    used = {x for n in out.graph.node for x in n.input}
    assert all(t.name in used for t in out.graph.initializer)
    meta = {p.key: p.value for p in out.metadata_props}
    for p in src.metadata_props:
        if p.key != CONVERTED_KEY:
            assert meta.get(p.key) == p.value
    assert CONVERTED_KEY in meta


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def model_of(nodes, inputs, outputs, inits, opset=17, meta=None):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR)
    for k, v in (meta or {}).items():
        m.metadata_props.add(key=k, value=v)
    return m


def masked(rng, shape, keep_mask):
    """Weights with magnitudes in [0.5, 1.5) where keep_mask, zeros elsewhere."""
    w = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    return np.where(keep_mask, w, 0.0).astype(np.float32)


def block_mask(rng, M, K, density, rows=4):
    G = -(-M // rows)
    return np.repeat(rng.random((G, K)) < density, rows, axis=0)[:M]


def bank_mask(rng, M, K, bank, keep, rows=1):
    G = -(-M // rows)
    mask = np.zeros((G, K), dtype=bool)
    for g in range(G):
        for lo in range(0, K, bank):
            length = min(bank, K - lo)
            n = keep if length == bank else ragged_keep(length, keep, bank)
            mask[g, lo + rng.choice(length, n, replace=False)] = True
    return np.repeat(mask, rows, axis=0)[:M]


def rows_by_name(report):
    return {l.name: l for l in report.layers}


def sparse_nodes(model):
    return [n for n in model.graph.node if n.domain == "ai.sparsekit"]


# ---------------------------------------------------------------------------------------------
# output equality over the zoo


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_outputs_match_pruned_model(name, pattern, sparsity):
    pruned, prep = sparsekit.prune(zoo(name), sparsity=sparsity, min_params=0, **PATTERNS[pattern])
    sparse, report = convert(pruned)
    assert_valid_output(pruned, sparse)
    overrides = {"seq": 5} if name == "bert_layer" else None
    assert_same_outputs(pruned, sparse, threads=(1, 2), overrides=overrides)

    pruned_names = {r.name for r in prep.layers}
    rows = rows_by_name(report)
    assert pruned_names <= set(rows)
    limits = DEFAULT_MAX_DENSITY
    for n in pruned_names:
        row = rows[n]
        if row.op == "LSTM":  # SparseLSTM (sequence.py): bank-balanced W and R, density <= 0.5
            if row.decision == "sparse":
                assert pattern.startswith("bank") and row.format.startswith("bank "), (n, row)
                assert row.density <= LSTM_MAX_DENSITY + 1e-9, (n, row)
            else:
                assert "not bank-balanced" in row.reason or \
                    f"> {LSTM_MAX_DENSITY:.2f}" in row.reason, (n, row)
            continue
        # the format follows the pattern; the decision follows the threshold of that format
        # (a small layer's rows can balance by chance: block/unstructured masks may then be
        # packed as one bank per row, which is as good as bsr)
        key = "block4" if pattern in ("block", "bank1x4") else "block1"
        if row.decision == "sparse":
            assert row.format.endswith("1x4" if key == "block4" else "1x1"), (n, row)
            if pattern.startswith("bank"):
                assert row.format.startswith("bank "), (n, row)
            assert row.density <= limits[key] + 1e-9, (n, row)
        else:
            assert row.decision == "dense" and row.format is None
            assert f"> {limits[key]:.2f}" in row.reason, (n, row)
            assert row.density > limits[key] - 0.02, (n, row)
    decisions = {rows[n].decision for n in pruned_names if rows[n].op != "LSTM"}
    if pattern in ("block", "bank1x4") or sparsity == 0.9:
        assert decisions == {"sparse"}
    else:  # single weights at density 0.5 are above the block1 limit (0.3)
        assert decisions == {"dense"}
    # layers prune left alone have no zeros and stay dense
    for row in report.layers:
        if row.name not in pruned_names and row.decision == "dense" and row.pattern == "dense":
            assert row.reason == "no zeros"
    # every sparse op and DepthwiseConv in the file is a converted row, and vice versa
    kinds = [n.op_type for n in sparse_nodes(sparse)]
    n_rows = len(kinds) + kinds.count("SparseLSTM")  # one row each for an LSTM's W and R
    assert n_rows == report.totals["converted"] + report.totals["depthwise"]


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "efficientnet_lite0"])
def test_depthwise_convs_between_sparse_ops_become_depthwiseconv(name):
    pruned, _ = sparsekit.prune(zoo(name), sparsity=0.9, min_params=0)
    sparse, report = convert(pruned)
    dw_rows = [l for l in report.layers if l.pattern == "depthwise"]
    assert dw_rows and all(l.decision == "depthwise" for l in dw_rows)
    assert sum(n.op_type == "DepthwiseConv" for n in sparse.graph.node) == len(dw_rows)
    # no Conv left but the dense first conv: the backbone is NCHW inside sparsekit ops
    assert sum(n.op_type == "Conv" for n in sparse.graph.node) == 1
    off, rep_off = convert(pruned, depthwise=False)
    assert not any(n.op_type == "DepthwiseConv" for n in off.graph.node)
    assert all("turned off" in l.reason for l in rep_off.layers if l.pattern == "depthwise")
    assert_same_outputs(pruned, off)


def test_file_shrinks_at_90_percent_1x4_and_report_bytes_are_the_initializers():
    for name in ZOO:
        # LSTM weights are pruned with the bank pattern only (SparseLSTM)
        pattern = "bank" if name == "lstm_lm" else "block"
        pruned, _ = sparsekit.prune(zoo(name), pattern, sparsity=0.9, min_params=0)
        sparse, report = convert(pruned)
        t = report.totals
        assert t["converted"] > 0
        assert t["converted_bytes_ratio"] <= 0.15, (name, t)
        # what the report says is what the file holds
        inits = {x.name: numpy_helper.to_array(x) for x in sparse.graph.initializer}
        packed = sum(inits[i].nbytes for n in sparse_nodes(sparse) if n.op_type != "DepthwiseConv"
                     for i in n.input[1:5 if n.op_type == "SparseLSTM" else 4] if i)
        assert packed == t["converted_sparse_bytes"]
        src = {x.name: x for x in pruned.graph.initializer}
        by_name = {l.name: l for l in report.layers}
        dense = 0
        for layer in list(prunable_layers(pruned)) + list(lstm_layers(pruned)):
            if by_name[layer.name].decision == "sparse":
                dense += numpy_helper.to_array(src[layer.weight]).nbytes
        assert dense == t["converted_dense_bytes"]
        assert t["weight_bytes_after"] < 0.25 * t["weight_bytes_before"]
        # the file shrinks by (about) what the converted layers saved
        saved = t["converted_dense_bytes"] - t["converted_sparse_bytes"]
        assert sparse.ByteSize() < pruned.ByteSize() - 0.9 * saved


# ---------------------------------------------------------------------------------------------
# patterns from the zeros alone


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_recipe_metadata_not_needed(pattern):
    pruned, _ = sparsekit.prune(zoo("resnet50"), sparsity=0.8, min_params=0, **PATTERNS[pattern])
    stripped = onnx.ModelProto()
    stripped.CopyFrom(pruned)
    keep = [p for p in stripped.metadata_props if p.key != RECIPE_KEY]
    del stripped.metadata_props[:]
    stripped.metadata_props.extend(keep)
    _, with_recipe = convert(pruned)
    sparse, without = convert(stripped)
    a, b = rows_by_name(with_recipe), rows_by_name(without)
    # the same decisions and formats; a bank size may differ where a small layer balances with
    # more than one bank size (the recipe's is tried first, the zeros alone give the first found)
    family = lambda f: None if f is None else (f.split()[0], f.split()[-1])  # noqa: E731
    assert {n: (r.decision, family(r.format)) for n, r in a.items()} == \
        {n: (r.decision, family(r.format)) for n, r in b.items()}
    for n, r in b.items():
        if r.format and r.format.startswith("bank") and a[n].format != r.format:
            assert r.pattern.startswith("1x4 blocks + bank-balanced" if "1x4" in r.format
                                        else "bank-balanced")
    assert_same_outputs(stripped, sparse)


def _hand_pruned_mlp(rng):
    """Five MatMuls pruned here by hand, the way another tool would: no recipe."""
    K = 144
    specs = {
        "blocks": masked(rng, (64, K), block_mask(rng, 64, K, 0.2)),
        "bank48": masked(rng, (64, K), bank_mask(rng, 64, K, 48, 5)),
        "bank48x4": masked(rng, (64, K), bank_mask(rng, 64, K, 48, 6, rows=4)),
        "ragged40": masked(rng, (64, 100), bank_mask(rng, 64, 100, 40, 4)),
        "unstructured": masked(rng, (64, K), rng.random((64, K)) < 0.15),
    }
    nodes, inits, outs = [], [], []
    for name, W in specs.items():
        Kn = W.shape[1]
        x = "x" if Kn == K else "x100"
        inits.append(init(f"{name}_w", W.T.copy()))  # MatMul weight is [K, N]
        nodes.append(helper.make_node("MatMul", [x, f"{name}_w"], [f"{name}_y"], name=name))
        outs.append(vi(f"{name}_y", ["batch", 64]))
    return model_of(nodes, [vi("x", ["batch", K]), vi("x100", ["batch", 100])], outs, inits)


def test_patterns_detected_in_a_model_pruned_elsewhere():
    m = _hand_pruned_mlp(np.random.default_rng(1))
    sparse, report = convert(m)
    rows = rows_by_name(report)
    assert rows["blocks"].format == "bsr 1x4" and rows["blocks"].pattern == "1x4 blocks"
    assert rows["bank48"].format == "bank 48 1x1"
    assert rows["bank48"].pattern == "bank-balanced (bank 48, keep 5)"
    assert rows["bank48x4"].format == "bank 48 1x4"
    assert rows["ragged40"].format == "bank 40 1x1"
    assert rows["unstructured"].format == "bsr 1x1" and rows["unstructured"].pattern == "unstructured"
    assert all(r.decision == "sparse" for r in report.layers)
    assert_valid_output(m, sparse)
    assert_same_outputs(m, sparse, overrides={"batch": 3})


def test_resnet_with_batchnorm_pruned_elsewhere():
    """Masks applied to the raw conv weights, BN still there: convert folds BN, zeros survive."""
    rng = np.random.default_rng(2)
    m = build("resnet50", resolution=32, width=0.125, num_classes=10, bn=True)
    assert any(n.op_type == "BatchNormalization" for n in m.graph.node)
    conv_w = {n.input[1] for n in m.graph.node if n.op_type == "Conv"}
    for t in m.graph.initializer:
        if t.name in conv_w and t.dims[1] > 3:
            w = numpy_helper.to_array(t)
            M, K = w.shape[0], int(np.prod(w.shape[1:]))
            keep = block_mask(rng, M, K, 0.25).reshape(w.shape)
            t.CopyFrom(numpy_helper.from_array((w * keep).astype(np.float32), t.name))
    sparse, report = convert(m)
    assert report.folded_bn and not any(n.op_type == "BatchNormalization" for n in sparse.graph.node)
    fmts = {l.format for l in report.layers if l.decision == "sparse"}
    assert fmts and all(f.endswith("1x4") for f in fmts)
    assert report.totals["converted"] == sum(1 for l in report.layers if l.pattern != "dense")
    assert_same_outputs(m, sparse, threads=(1, 2))


def test_recipe_structure_packs_kept_weights_that_are_exactly_zero():
    """prune's recipe says bank 1x4; a kept weight is exactly 0 (it was zero before pruning):
    the zeros alone no longer show 1x4 groups, the recipe still packs bank 1x4."""
    rng = np.random.default_rng(3)
    W = masked(rng, (16, 64), bank_mask(rng, 16, 64, 16, 4, rows=4))
    r, c = np.argwhere(W != 0)[5]
    W[r, c] = 0.0
    recipe = {"version": 1, "layers": {"fc": {"op": "MatMul", "weight": "w", "pattern": "bank",
                                             "sparsity": 0.75, "achieved": 0.75, "bank_size": 16,
                                             "block": [1, 4]}}}
    m = model_of([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], [vi("x", [3, 64])],
                 [vi("y", [3, 16])], [init("w", W.T.copy())], meta={RECIPE_KEY: json.dumps(recipe)})
    sparse, report = convert(m)
    assert report.layers[0].format == "bank 16 1x4" and "recipe" in report.layers[0].pattern
    assert_same_outputs(m, sparse)
    stripped = model_of([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
                        [vi("x", [3, 64])], [vi("y", [3, 16])], [init("w", W.T.copy())])
    _, rep2 = convert(stripped)  # no recipe: single weights, and 0.25 <= 0.3 still converts
    assert rep2.layers[0].format == "bsr 1x1"


# ---------------------------------------------------------------------------------------------
# decisions: thresholds and autotune


def _one_layer(rng, density, pattern="block", M=32, K=64):
    mask = block_mask(rng, M, K, density) if pattern == "block" else rng.random((M, K)) < density
    W = masked(rng, (M, K), mask)
    return model_of([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
                    [vi("x", [4, K])], [vi("y", [4, M])], [init("w", W)])


def test_thresholds_flip_decisions():
    rng = np.random.default_rng(4)
    blocks = _one_layer(rng, 0.5)              # 1x4 blocks, density ~0.5
    single = _one_layer(rng, 0.2, "unstructured")
    assert convert(blocks)[1].layers[0].decision == "sparse"
    row = convert(blocks, max_density={"block4": 0.3})[1].layers[0]
    assert row.decision == "dense" and "> 0.30" in row.reason and row.format is None
    assert convert(single)[1].layers[0].decision == "sparse"
    assert convert(single, max_density={"block1": 0.1})[1].layers[0].decision == "dense"
    denser = _one_layer(rng, 0.5, "unstructured")
    assert convert(denser)[1].layers[0].decision == "dense"
    row = convert(denser, max_density={"block1": 0.9})[1].layers[0]
    assert row.decision == "sparse" and row.format == "bsr 1x1"
    # the block1 limit does not apply to 1x4 blocks and vice versa
    assert convert(blocks, max_density={"block1": 0.0})[1].layers[0].decision == "sparse"


@pytest.mark.parametrize("bad", [{"block8": 0.5}, {"block4": 1.5}, {"block1": "x"}, 0.5])
def test_bad_thresholds(bad):
    with pytest.raises(SparsekitError, match="max_density"):
        convert(_one_layer(np.random.default_rng(0), 0.5), max_density=bad)


@pytest.mark.parametrize("dense_ms,sparse_ms,want", [(2.0, 1.0, "sparse"), (1.0, 2.0, "dense"),
                                                     (1.0, 1.0, "dense")])
def test_autotune_keeps_the_faster(monkeypatch, dense_ms, sparse_ms, want):
    calls = []

    def fake_time(self, model, plan, shapes):
        calls.append(plan.layer.name)
        return dense_ms, sparse_ms

    monkeypatch.setattr(convert_autotune.AutoTuner, "time", fake_time)
    rng = np.random.default_rng(5)
    # density 0.7 is above the block4 limit: autotune decides by timing instead
    for density in (0.2, 0.7):
        m = _one_layer(rng, density)
        sparse, report = convert(m, autotune=True)
        row = report.layers[0]
        assert (row.dense_ms, row.sparse_ms) == (dense_ms, sparse_ms)
        assert row.decision == want and row.reason.startswith("autotune:")
        assert bool(sparse_nodes(sparse)) == (want == "sparse")
        assert_same_outputs(m, sparse)
    assert calls == ["fc", "fc"]
    # a model without zeros is not timed
    dense = _one_layer(rng, 1.0)
    assert convert(dense, autotune=True)[1].layers[0].dense_ms is None


def test_autotune_that_cannot_time_falls_back_to_the_threshold(monkeypatch):
    def broken(self, model, plan, shapes):
        raise RuntimeError("no timer")

    monkeypatch.setattr(convert_autotune.AutoTuner, "time", broken)
    rng = np.random.default_rng(6)
    low, high = convert(_one_layer(rng, 0.2), autotune=True)[1].layers[0], \
        convert(_one_layer(rng, 0.8), autotune=True)[1].layers[0]
    assert low.decision == "sparse" and "could not time" in low.note
    assert high.decision == "dense" and "could not time" in high.note


def test_autotune_real_timing():
    rng = np.random.default_rng(7)
    W = masked(rng, (32, 16, 1, 1), block_mask(rng, 32, 16, 0.2).reshape(32, 16, 1, 1))
    m = model_of([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                  helper.make_node("Relu", ["c"], ["y"])],
                 [vi("x", ["N", 16, 8, 8])], [vi("y", ["N", 32, 8, 8])], [init("w", W)])
    sparse, report = convert(m, autotune=True, threads=1, autotune_dims={"N": 2})
    row = report.layers[0]
    assert row.dense_ms > 0 and row.sparse_ms > 0
    assert row.decision == ("sparse" if row.sparse_ms < row.dense_ms else "dense")
    assert report.settings["autotune_dims"] == {"N": 2}
    assert_same_outputs(m, sparse)


# ---------------------------------------------------------------------------------------------
# fusion


def _conv_w(rng, M, C, k=1, density=0.25):
    K = C * k * k
    return masked(rng, (M, C, k, k), block_mask(rng, M, K, density).reshape(M, C, k, k))


def _fused_single_op(m, fused):
    sparse, report = convert(m)
    assert_valid_output(m, sparse)
    assert len(sparse.graph.node) == 1 and sparse.graph.node[0].domain == "ai.sparsekit"
    assert report.layers[0].fused == fused
    assert_same_outputs(m, sparse)
    return sparse


def test_fuses_bias_batchnorm_relu_and_residual():
    rng = np.random.default_rng(8)
    M = 16
    bn = [init(n, v) for n, v in (("s", rng.uniform(0.5, 2, M)), ("b", rng.standard_normal(M)),
                                  ("mu", rng.standard_normal(M)), ("var", rng.uniform(0.5, 2, M)))]
    bn = [init(t.name, numpy_helper.to_array(t).astype(np.float32)) for t in bn]
    nodes = [helper.make_node("Conv", ["x", "w", "cb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "k"], ["c2"]),
             helper.make_node("BatchNormalization", ["c2", "s", "b", "mu", "var"], ["bn"]),
             helper.make_node("Add", ["r", "bn"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    m = model_of(nodes, [vi("x", [1, 8, 6, 6]), vi("r", [1, M, 6, 6])], [vi("y", [1, M, 6, 6])],
                 [init("w", _conv_w(rng, M, 8, 3)), init("cb", rng.standard_normal(M).astype(np.float32)),
                  init("k", rng.standard_normal((1, M, 1, 1)).astype(np.float32))] + bn)
    # convert folds Conv->BN itself only when the BN directly follows; here an Add sits between
    _fused_single_op(m, "bias+batchnorm+residual+relu")


def test_residual_after_activation():
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["a"]),
             helper.make_node("Add", ["a", "x"], ["y"])]
    m = model_of(nodes, [vi("x", ["N", 16, 5, 5])], [vi("y", ["N", 16, 5, 5])],
                 [init("w", _conv_w(rng, 16, 16))])
    sparse = _fused_single_op(m, "relu+residual")
    node = sparse.graph.node[0]
    assert helper.get_attribute_value(
        next(a for a in node.attribute if a.name == "residual_after_act")) == 1
    assert_same_outputs(m, sparse, overrides={"N": 3})


@pytest.mark.parametrize("other_shape", [[1, 16, 5, 5], [2, 16, 1, 1], [16, 5, 5], ["N", 16, 5, 1]])
def test_residual_that_broadcasts_is_never_fused(other_shape):
    rng = np.random.default_rng(10)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "r"], ["y"])]
    x_shape = [2, 16, 5, 5] if "N" not in other_shape else ["N", 16, 5, 5]
    m = model_of(nodes, [vi("x", x_shape), vi("r", other_shape)], [vi("y", x_shape)],
                 [init("w", _conv_w(rng, 16, 16))])
    sparse, report = convert(m)
    assert report.layers[0].fused == "" and [n.op_type for n in sparse.graph.node] == ["SparseConv", "Add"]
    assert_same_outputs(m, sparse, overrides={"N": 2})


def test_constant_add_that_raises_the_rank_is_not_a_bias():
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "k"], ["y"])]
    m = model_of(nodes, [vi("x", [1, 16, 4, 4])], [vi("y", [1, 1, 16, 4, 4])],
                 [init("w", _conv_w(rng, 16, 16)), init("k", np.ones((1, 1, 16, 1, 1), np.float32))])
    sparse, report = convert(m)
    assert report.layers[0].fused == ""
    assert_same_outputs(m, sparse)


@pytest.mark.parametrize("how", ["inputs", "constant_nodes", "attributes", "no_max", "min_gt_max"])
def test_clip_bounds(how):
    rng = np.random.default_rng(12)
    inits = [init("w", _conv_w(rng, 16, 8))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"])]
    opset = 17
    if how == "inputs":
        inits += [init("lo", np.float32(0)), init("hi", np.float32(6))]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    elif how == "constant_nodes":
        nodes += [helper.make_node("Constant", [], ["lo"], value=init("v0", np.float32(-1))),
                  helper.make_node("Constant", [], ["hi"], value_float=1.5),
                  helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    elif how == "attributes":
        opset = 10
        nodes.append(helper.make_node("Clip", ["c"], ["y"], min=0.0, max=6.0))
    elif how == "no_max":
        inits.append(init("lo", np.float32(0.5)))
        nodes.append(helper.make_node("Clip", ["c", "lo", ""], ["y"]))
    else:  # ONNX: min > max sets everything to max; the kernels' clamp differs, so no fusion
        inits += [init("lo", np.float32(2)), init("hi", np.float32(1))]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    m = model_of(nodes, [vi("x", [1, 8, 4, 4])], [vi("y", [1, 16, 4, 4])], inits, opset=opset)
    sparse, report = convert(m)
    assert report.layers[0].fused == ("" if how == "min_gt_max" else "clip")
    assert_valid_output(m, sparse)
    assert_same_outputs(m, sparse)


def test_batchnorm_not_folded_by_prune_is_fused():
    """A conv weight shared by two convs cannot be folded in place; the fused op scales its copy."""
    rng = np.random.default_rng(13)
    M = 16
    p = {n: init(n, v.astype(np.float32)) for n, v in
         (("s", rng.uniform(0.5, 2, M)), ("b", rng.standard_normal(M)),
          ("mu", rng.standard_normal(M)), ("var", rng.uniform(0.5, 2, M)))}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
             helper.make_node("BatchNormalization", ["c1", "s", "b", "mu", "var"], ["y1"]),
             helper.make_node("Conv", ["x", "w"], ["y2"], name="conv2")]
    m = model_of(nodes, [vi("x", [1, M, 4, 4])], [vi("y1", [1, M, 4, 4]), vi("y2", [1, M, 4, 4])],
                 [init("w", _conv_w(rng, M, M))] + list(p.values()))
    sparse, report = convert(m)
    assert not report.folded_bn and any("shared" in n for n in report.notes)
    rows = rows_by_name(report)
    assert rows["conv1"].fused == "batchnorm" and rows["conv2"].decision == "sparse"
    assert [n.op_type for n in sparse.graph.node] == ["SparseConv", "SparseConv"]
    assert "w" not in {t.name for t in sparse.graph.initializer}
    assert_same_outputs(m, sparse)


def test_batchnorm_with_runtime_parameters_stays_after_the_sparse_op():
    rng = np.random.default_rng(27)
    M = 16
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "s", "b", "mu", "var"], ["y"])]
    m = model_of(nodes, [vi("x", [1, 8, 4, 4]), vi("s", [M])], [vi("y", [1, M, 4, 4])],
                 [init("w", _conv_w(rng, M, 8))] +
                 [init(n, rng.uniform(0.5, 2, M).astype(np.float32)) for n in ("b", "mu", "var")])
    sparse, report = convert(m)
    assert any("not folded" in n for n in report.notes) and report.layers[0].fused == ""
    assert [n.op_type for n in sparse.graph.node] == ["SparseConv", "BatchNormalization"]
    assert_same_outputs(m, sparse)


def test_gemm_alpha_beta_bias_transb_and_batchnorm():
    rng = np.random.default_rng(14)
    M, K = 12, 32
    W = masked(rng, (M, K), block_mask(rng, M, K, 0.3))
    s = [init(n, v.astype(np.float32)) for n, v in
         (("s", rng.uniform(0.5, 2, M)), ("b", rng.standard_normal(M)),
          ("mu", rng.standard_normal(M)), ("var", rng.uniform(0.5, 2, M)))]
    for transB, C in ((1, rng.standard_normal(M)), (0, rng.standard_normal((1, M))),
                      (1, np.float32(0.7))):
        w = W if transB else W.T.copy()
        nodes = [helper.make_node("Gemm", ["x", "w", "C"], ["g"], alpha=0.5, beta=2.0, transB=transB),
                 helper.make_node("BatchNormalization", ["g", "s", "b", "mu", "var"], ["y"])]
        m = model_of(nodes, [vi("x", [3, K])], [vi("y", [3, M])],
                     [init("w", w), init("C", np.asarray(C, np.float32))] + s)
        sparse = _fused_single_op(m, "batchnorm")
        assert sparse.graph.node[0].op_type == "SparseGemm"
    # C that is a full [rows, M] matrix is not a bias: the layer stays dense, with the reason
    m = model_of([helper.make_node("Gemm", ["x", "w", "C"], ["y"], transB=1)], [vi("x", [3, K])],
                 [vi("y", [3, M])], [init("w", W), init("C", rng.standard_normal((3, M)).astype(np.float32))])
    sparse, report = convert(m)
    assert report.layers[0].decision == "dense" and "not a per-feature bias" in report.layers[0].reason
    assert_same_outputs(m, sparse)


def test_symbolic_batch_and_sequence():
    """MatMul on [batch, seq, K] (bias + residual fused) and Conv with symbolic N, H, W run at
    several sizes."""
    rng = np.random.default_rng(15)
    K = 32
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "bias"], ["a"]),
             helper.make_node("Add", ["a", "x"], ["y"])]
    mm = model_of(nodes, [vi("x", ["batch", "seq", K])], [vi("y", ["batch", "seq", K])],
                  [init("w", masked(rng, (K, K), rng.random((K, K)) < 0.2)),
                   init("bias", rng.standard_normal(K).astype(np.float32))])
    conv = model_of([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                     helper.make_node("Relu", ["c"], ["y"])],
                    [vi("x", ["N", 8, "H", "W"])], [vi("y", ["N", 16, "H", "W"])],
                    [init("w", _conv_w(rng, 16, 8, 3))])
    for m, fused, sizes in ((mm, "bias+residual", [{"batch": 1, "seq": 1}, {"batch": 3, "seq": 7}]),
                            (conv, "relu", [{"N": 1, "H": 5, "W": 5}, {"N": 3, "H": 9, "W": 4}])):
        sparse, report = convert(m)
        assert report.layers[0].fused == fused
        assert len(sparse.graph.node) == 1
        assert_valid_output(m, sparse)
        for dims in sizes:
            assert_same_outputs(m, sparse, overrides=dims)


def test_matmul_rank_1_and_rank_4_inputs():
    rng = np.random.default_rng(16)
    W = masked(rng, (16, 8), rng.random((16, 8)) < 0.2)
    for shape in ([16], [2, 3, 4, 16]):
        m = model_of([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", shape)],
                     [vi("y", shape[:-1] + [8])], [init("w", W)])
        sparse, report = convert(m)
        assert report.layers[0].decision == "sparse"
        assert_same_outputs(m, sparse)


def test_shared_weight_is_correct_for_both_users():
    rng = np.random.default_rng(17)
    W = masked(rng, (16, 16), block_mask(rng, 16, 16, 0.25))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="first"),
             helper.make_node("Gemm", ["a", "w"], ["y"], name="second", transB=1),
             helper.make_node("MatMul", ["x", "w"], ["z"], name="third")]
    m = model_of(nodes, [vi("x", [2, 16])], [vi("y", [2, 16]), vi("z", [2, 16])], [init("w", W)])
    sparse, report = convert(m)
    assert all(l.decision == "sparse" for l in report.layers)
    assert "w" not in {t.name for t in sparse.graph.initializer}
    assert_same_outputs(m, sparse)
    sparse, report = convert(m, exclude="^third$")
    rows = rows_by_name(report)
    assert rows["third"].decision == "dense" and "exclude" in rows["third"].reason
    assert "also read by third" in rows["first"].note
    assert "w" in {t.name for t in sparse.graph.initializer}
    assert_same_outputs(m, sparse)


def test_names_that_collide_with_the_packed_tensors():
    rng = np.random.default_rng(18)
    W = masked(rng, (16, 16), block_mask(rng, 16, 16, 0.25))
    nodes = [helper.make_node("Add", ["x", "fc.values"], ["fc.indices"], name="pre"),
             helper.make_node("MatMul", ["fc.indices", "w"], ["y"], name="fc")]
    m = model_of(nodes, [vi("x", [2, 16])], [vi("y", [2, 16])],
                 [init("w", W), init("fc.values", rng.standard_normal(16).astype(np.float32))])
    sparse, _ = convert(m)
    names = [t.name for t in sparse.graph.initializer]
    assert len(names) == len(set(names)) and "fc.values" in names
    assert_valid_output(m, sparse)
    assert_same_outputs(m, sparse)


def test_value_used_inside_a_subgraph_is_not_fused_away():
    rng = np.random.default_rng(19)
    then_g = helper.make_graph([helper.make_node("Identity", ["c"], ["t"])], "then", [],
                               [vi("t", [1, 16, 4, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["c"], ["e"])], "else", [],
                               [vi("e", [1, 16, 4, 4])])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    m = model_of(nodes, [vi("x", [1, 8, 4, 4]), vi("cond", [], TensorProto.BOOL)],
                 [vi("r", [1, 16, 4, 4]), vi("y", [1, 16, 4, 4])], [init("w", _conv_w(rng, 16, 8))])
    sparse, report = convert(m)
    assert report.layers[0].fused == ""
    for cond in (True, False):
        feeds = {"x": np.random.default_rng(0).standard_normal((1, 8, 4, 4)).astype(np.float32),
                 "cond": np.array(cond)}
        assert_close(run_stock(m, feeds), run_sparse(sparse, feeds))


def test_constant_node_weights_and_metadata_are_kept():
    rng = np.random.default_rng(20)
    W = masked(rng, (16, 16), block_mask(rng, 16, 16, 0.25))
    nodes = [helper.make_node("Constant", [], ["w"], value=init("w", W.T.copy())),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    m = model_of(nodes, [vi("x", [2, 16])], [vi("y", [2, 16])], [], meta={"author": "me"})
    sparse, report = convert(m)
    assert report.layers[0].decision == "sparse"
    assert {p.key: p.value for p in sparse.metadata_props}["author"] == "me"
    conv_meta = json.loads({p.key: p.value for p in sparse.metadata_props}[CONVERTED_KEY])
    assert conv_meta["layers"] == {"fc": "bsr 1x4"}
    assert_valid_output(m, sparse)
    assert_same_outputs(m, sparse)


def test_depthwise_rules():
    rng = np.random.default_rng(21)
    C = 16

    def mbv1_block(dw_attrs, dw_w=None, next_sparse=True):
        pw = _conv_w(rng, C, C) if next_sparse else rng.standard_normal((C, C, 1, 1)).astype(np.float32)
        nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="pw0"),
                 helper.make_node("Relu", ["a"], ["ar"]),
                 helper.make_node("Conv", ["ar", "dw"], ["d"], name="dw", **dw_attrs),
                 helper.make_node("Relu", ["d"], ["dr"]),
                 helper.make_node("Conv", ["dr", "w1"], ["y"], name="pw1")]
        dw = dw_w if dw_w is not None else rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
        return model_of(nodes, [vi("x", [1, C, 8, 8])], [vi("y", None)],
                        [init("w0", _conv_w(rng, C, C) if next_sparse else pw), init("dw", dw),
                         init("w1", pw)])

    ok = mbv1_block(dict(group=C, pads=[1, 1, 1, 1], strides=[2, 2]))
    sparse, report = convert(ok)
    assert rows_by_name(report)["dw"].decision == "depthwise"
    assert rows_by_name(report)["dw"].fused == "relu"
    assert_same_outputs(ok, sparse)
    same = mbv1_block(dict(group=C, auto_pad="SAME_UPPER"))
    sparse, report = convert(same)
    assert rows_by_name(report)["dw"].decision == "depthwise"
    assert_same_outputs(same, sparse)
    for attrs, dw_w, why in (
            (dict(group=C, pads=[1, 1, 1, 1], strides=[2, 1]), None, "strides"),
            (dict(group=C, pads=[1, 1, 1, 1], dilations=[2, 2]), None, "dilated"),
            (dict(group=C, pads=[1, 1, 1, 1]), rng.standard_normal((C, 1, 3, 1)).astype(np.float32), "square"),
            (dict(group=C // 2, pads=[1, 1, 1, 1]), rng.standard_normal((C, 2, 3, 3)).astype(np.float32),
             "grouped conv (group 8"),
    ):
        m = mbv1_block(attrs, dw_w)
        sparse, report = convert(m)
        row = rows_by_name(report)["dw"]
        assert row.decision == "dense" and why in row.reason, row
        assert_same_outputs(m, sparse)
    # a depthwise conv with no sparse neighbour keeps onnxruntime's kernel
    lonely = mbv1_block(dict(group=C, pads=[1, 1, 1, 1]), next_sparse=False)
    sparse, report = convert(lonely)
    assert "no sparse op next to it" in rows_by_name(report)["dw"].reason
    assert not sparse_nodes(sparse)


def test_channel_multiplier_depthwise_stays_dense():
    rng = np.random.default_rng(22)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"]),
             helper.make_node("Conv", ["a", "dw"], ["y"], name="dw", group=16, pads=[1, 1, 1, 1])]
    m = model_of(nodes, [vi("x", [1, 8, 6, 6])], [vi("y", [1, 32, 6, 6])],
                 [init("w0", _conv_w(rng, 16, 8)),
                  init("dw", rng.standard_normal((32, 1, 3, 3)).astype(np.float32))])
    sparse, report = convert(m)
    assert "channel multiplier 2" in rows_by_name(report)["dw"].reason
    assert_same_outputs(m, sparse)


# ---------------------------------------------------------------------------------------------
# layers that stay dense, and bad input


def test_unsupported_layers_stay_dense_with_a_reason():
    rng = np.random.default_rng(23)
    nodes = [
        helper.make_node("Conv", ["x", "wg"], ["g"], name="grouped", group=2),
        helper.make_node("Conv", ["x1d", "w1d"], ["o1d"], name="conv1d"),
        helper.make_node("Conv", ["xs", "wsame"], ["osame"], name="same_dynamic",
                         auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Conv", ["x", "wsame2"], ["osame2"], name="same_static",
                         auto_pad="SAME_LOWER", strides=[2, 2]),
        helper.make_node("Gemm", ["xt", "wt"], ["ot"], name="transA", transA=1),
        helper.make_node("MatMul", ["x2", "xw"], ["oin"], name="input_weight"),
        helper.make_node("MatMul", ["x2", "q"], ["oq"], name="from_dq"),
        helper.make_node("DequantizeLinear", ["q8", "qs"], ["q"], name="dq"),
        helper.make_node("MatMul", ["c0", "xw"], ["oc"], name="const_first"),
        helper.make_node("MatMul", ["x3", "w3d"], ["o3"], name="batched_weight"),
    ]
    inits = [init("wg", _conv_w(rng, 16, 4, 1)), init("w1d", _conv_w(rng, 8, 8, 1)[..., 0]),
             init("wsame", _conv_w(rng, 8, 8, 3)), init("wsame2", _conv_w(rng, 8, 8, 3)),
             init("wt", masked(rng, (8, 8), rng.random((8, 8)) < 0.2)),
             init("q8", rng.integers(-3, 3, (8, 8)).astype(np.int8)), init("qs", np.float32(0.1)),
             init("c0", masked(rng, (3, 8), rng.random((3, 8)) < 0.2)),
             init("w3d", masked(rng, (2, 8, 8), rng.random((2, 8, 8)) < 0.2))]
    m = model_of(nodes, [vi("x", [1, 8, 5, 5]), vi("x1d", [1, 8, 7]), vi("xs", [1, 8, "H", "W"]),
                         vi("xt", [8, 3]), vi("x2", [3, 8]), vi("xw", [8, 8]), vi("x3", [2, 3, 8])],
                 [vi(o, None) for o in ("g", "o1d", "osame", "osame2", "ot", "oin", "oq", "oc", "o3")],
                 inits)
    sparse, report = convert(m)
    rows = rows_by_name(report)
    assert "grouped conv (group 2" in rows["grouped"].reason
    assert "1-D conv" in rows["conv1d"].reason
    assert "SAME_UPPER with stride 2 needs a static input size" in rows["same_dynamic"].reason
    assert rows["same_static"].decision == "sparse"
    assert "transA" in rows["transA"].reason
    assert all(rows[n].decision == "dense" for n in ("grouped", "conv1d", "same_dynamic", "transA"))
    skipped = {s["name"]: s["reason"] for s in report.skipped}
    assert "graph input" in skipped["input_weight"]
    assert "DequantizeLinear" in skipped["from_dq"]
    assert "first input" in skipped["const_first"]
    assert "unsupported weight shape [2, 8, 8]" in skipped["batched_weight"]
    assert report.totals["skipped"] == 4
    feeds = feeds_for(m, overrides={"H": 9, "W": 6})
    assert_close(run_stock(m, feeds), run_sparse(sparse, feeds))


def test_fp16_weights_stay_dense():
    rng = np.random.default_rng(24)
    W = masked(rng, (16, 16), block_mask(rng, 16, 16, 0.25)).astype(np.float16)
    m = model_of([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
                 [vi("x", [2, 16], TensorProto.FLOAT16)], [vi("y", [2, 16], TensorProto.FLOAT16)],
                 [init("w", W)])
    sparse, report = convert(m)
    row = report.layers[0]
    assert row.decision == "dense" and "float16 weights are not supported" in row.reason
    assert row.dense_bytes == W.nbytes and row.density == pytest.approx((W != 0).mean())
    assert not sparse_nodes(sparse)
    assert_valid_output(m, sparse)


def test_already_converted_and_reconverting_a_dense_result():
    rng = np.random.default_rng(25)
    m = _one_layer(rng, 0.3)
    sparse, _ = convert(m)
    with pytest.raises(SparsekitError, match="already converted"):
        convert(sparse)
    dense = _one_layer(rng, 1.0)
    once, _ = convert(dense)
    twice, report = convert(once)  # nothing was converted: a second run is fine
    assert [p.key for p in twice.metadata_props].count(CONVERTED_KEY) == 1
    assert report.layers[0].reason == "no zeros"


def test_input_model_is_not_modified_and_progress_is_reported():
    pruned, _ = sparsekit.prune(zoo("mobilenet_v1"), sparsity=0.9, min_params=0)
    before = pruned.SerializeToString()
    seen = []
    _, report = convert(pruned, progress=lambda d, t, n: seen.append((d, t)))
    assert pruned.SerializeToString() == before
    assert seen[-1][0] == seen[-1][1] == len(report.layers)
    assert [d for d, _ in seen] == list(range(1, len(report.layers) + 1))


@pytest.mark.parametrize("kw,needle", [(dict(include="("), "not a valid regex"),
                                       (dict(threads=0), "threads"),
                                       (dict(autotune_dims={"N": 0}), "autotune_dims")])
def test_bad_arguments(kw, needle):
    with pytest.raises(SparsekitError, match=needle):
        convert(_one_layer(np.random.default_rng(0), 0.3), **kw)


def test_include_exclude_rows():
    pruned, _ = sparsekit.prune(zoo("bert_layer"), sparsity=0.9, min_params=0)
    _, report = convert(pruned, include="ffn|intermediate|output")
    reasons = {l.name: l.reason for l in report.layers if l.decision == "dense"}
    assert reasons and all("include" in r for r in reasons.values())
    assert report.totals["converted"] + len(reasons) == len(report.layers)


def test_file_that_is_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(SparsekitError, match="not a valid ONNX model"):
        convert(str(bad))
    with pytest.raises(SparsekitError, match="no such file"):
        convert(str(tmp_path / "missing.onnx"))


# ---------------------------------------------------------------------------------------------
# the CLI


def _cli(args, capsys):
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_convert_writes_a_runnable_model_and_json(tmp_path, capsys):
    pruned, _ = sparsekit.prune(zoo("mobilenet_v2"), sparsity=0.9, min_params=0)
    src, out = tmp_path / "pruned.onnx", tmp_path / "sparse.onnx"
    onnx.save(pruned, str(src))
    code, stdout, stderr = _cli(["convert", src, "-o", out, "--json"], capsys)
    assert code == 0, stderr
    rep = json.loads(stdout)
    assert rep["totals"]["converted"] > 0 and rep["totals"]["converted_bytes_ratio"] <= 0.15
    sparse = onnx.load(str(out))
    assert_same_outputs(pruned, sparse)
    code, stdout, _ = _cli(["convert", src, "-o", tmp_path / "t.onnx", "--max-density", "block4=0.05",
                            "--allow-empty"], capsys)
    assert code == 0 and "kept" in stdout


def test_cli_bad_inputs(tmp_path, capsys):
    rng = np.random.default_rng(26)
    good = tmp_path / "m.onnx"
    onnx.save(_one_layer(rng, 0.3), str(good))
    converted = tmp_path / "converted.onnx"
    assert main(["convert", str(good), "-o", str(converted)]) == 0
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    cases = [
        ([converted], "already converted"),
        ([not_onnx], "not a valid ONNX model"),
        ([empty], "not a valid ONNX model"),
        ([tmp_path / "missing.onnx"], "no such file"),
        ([good, "--max-density", "block9=0.5"], "--max-density"),
        ([good, "--include", "("], "not a valid regex"),
    ]
    capsys.readouterr()
    for args, needle in cases:
        out = tmp_path / "out.onnx"
        code, _, stderr = _cli(["convert", args[0], "-o", out] + args[1:], capsys)
        lines = stderr.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error:"), (args, stderr)
        assert needle in lines[0], (needle, lines)
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")]


# ---------------------------------------------------------------------------------------------
# a convert that converts nothing (issue 21)


def _dense_and_fp16():
    """A Gemm with no zeros and a float16 MatMul: nothing convert can rewrite."""
    rng = np.random.default_rng(40)
    W16 = masked(rng, (16, 16), block_mask(rng, 16, 16, 0.25)).astype(np.float16)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1),
             helper.make_node("MatMul", ["x16", "w16"], ["y16"], name="fc16")]
    return model_of(nodes, [vi("x", [4, 8]), vi("x16", [2, 16], TensorProto.FLOAT16)],
                    [vi("y", [4, 8]), vi("y16", [2, 16], TensorProto.FLOAT16)],
                    [init("w", rng.standard_normal((8, 8)).astype(np.float32)), init("w16", W16)])


def test_nothing_converted_is_obvious_in_the_report():
    m = _dense_and_fp16()
    out, report = convert(m)
    assert report.nothing_converted == ("nothing converted: 0 of 2 layer(s) sparse "
                                        "(1 have no zeros, 1 float16)")
    assert not sparse_nodes(out)
    rng = np.random.default_rng(41)
    assert convert(_one_layer(rng, 0.3))[1].nothing_converted is None
    assert "no Conv, Gemm, MatMul" in convert(model_of(
        [helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], []))[1] \
        .nothing_converted
    # every layer too dense for its threshold
    note = convert(_one_layer(rng, 0.5), max_density={"block4": 0.05})[1].nothing_converted
    assert note == "nothing converted: 0 of 1 layer(s) sparse (1 too dense)"


def test_cli_convert_that_converts_nothing_exits_3_without_writing(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(_dense_and_fp16(), str(src))
    code, stdout, stderr = _cli(["convert", src, "-o", out], capsys)
    lines = stderr.strip().splitlines()
    assert code == 3 and len(lines) == 1, stderr
    assert lines[0].startswith("error: nothing converted: 0 of 2 layer(s) sparse "
                               "(1 have no zeros, 1 float16)") and "--allow-empty" in lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    code, stdout, stderr = _cli(["convert", src, "-o", out, "--json"], capsys)
    assert code == 3 and not out.exists()
    rep = json.loads(stdout)
    assert rep["output"] is None and rep["nothing_converted"].startswith("nothing converted")
    # --allow-empty: written (a copy of the input's graph), exit 0, the same line as a warning
    code, stdout, stderr = _cli(["convert", src, "-o", out, "--allow-empty"], capsys)
    lines = stderr.strip().splitlines()
    assert code == 0 and out.exists() and "wrote" in stdout
    assert len(lines) == 1 and lines[0].startswith("warning: nothing converted: 0 of 2"), stderr
    written = onnx.load(str(out))
    assert [n.op_type for n in written.graph.node] == ["Gemm", "MatMul"]


# ---------------------------------------------------------------------------------------------
# non-finite weights and unimplemented recurrent attributes stay in onnxruntime (issue 21)

NONFINITE = "non-finite weights (kept in onnxruntime, which propagates them)"


def assert_same_nonfinite(ref, out):
    """Outputs equal, NaN where the reference has NaN and the same infinities."""
    assert len(ref) == len(out)
    for a, b in zip(ref, out):
        assert a.shape == b.shape
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_array_equal(np.isinf(a) * np.sign(a), np.isinf(b) * np.sign(b))
        fin = np.isfinite(a)
        if fin.any():
            scale = float(np.abs(a[fin]).max()) or 1.0
            np.testing.assert_allclose(b[fin], a[fin], rtol=1e-4, atol=1e-5 * scale)


def _check_same(m, sparse, overrides=None):
    feeds = feeds_for(m, overrides=overrides)
    assert_same_nonfinite(run_stock(m, feeds), run_sparse(sparse, feeds))


def _poison(a, where, value):
    a = np.array(a, np.float32, copy=True)
    a.reshape(-1)[where] = value
    return a


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_and_biases_stay_dense(value):
    rng = np.random.default_rng(42)
    M = 16
    wok = _conv_w(rng, M, 8)
    nodes = [helper.make_node("Conv", ["x", "w_ok"], ["a"], name="ok"),
             helper.make_node("Conv", ["a", "w_bad"], ["b"], name="bad_weight"),
             helper.make_node("Conv", ["a", "w_ok2", "cb_bad"], ["c"], name="bad_bias"),
             helper.make_node("Conv", ["a", "w_ok3"], ["d0"], name="bad_add"),
             helper.make_node("Add", ["d0", "k_bad"], ["d1"]),
             helper.make_node("Relu", ["d1"], ["d"]),
             helper.make_node("Gemm", ["f", "g_bad", "gb"], ["g"], name="gemm_bad", transB=1),
             helper.make_node("MatMul", ["f", "mm_w"], ["h0"], name="matmul_bad_add"),
             helper.make_node("Add", ["h0", "mm_b"], ["h"])]
    cb = _poison(rng.standard_normal(M), 3, value)
    inits = [init("w_ok", wok), init("w_bad", _poison(_conv_w(rng, M, M), 5, value)),
             init("w_ok2", _conv_w(rng, M, M)), init("cb_bad", cb),
             init("w_ok3", _conv_w(rng, M, M)),
             init("k_bad", _poison(rng.standard_normal((1, M, 1, 1)), 7, value)),
             init("g_bad", _poison(masked(rng, (8, 32), block_mask(rng, 8, 32, 0.25)), 0, value)),
             init("gb", rng.standard_normal(8).astype(np.float32)),
             init("mm_w", masked(rng, (32, 8), block_mask(rng, 8, 32, 0.25).T)),
             init("mm_b", _poison(rng.standard_normal(8), 1, value))]
    m = model_of(nodes, [vi("x", [1, 8, 5, 5]), vi("f", [3, 32])],
                 [vi(o, None) for o in ("b", "c", "d", "g", "h")], inits)
    sparse, report = convert(m)
    rows = rows_by_name(report)
    assert rows["ok"].decision == "sparse"
    for name in ("bad_weight", "bad_bias", "bad_add", "gemm_bad", "matmul_bad_add"):
        assert rows[name].decision == "dense" and rows[name].reason == NONFINITE, rows[name]
    assert [n.op_type for n in sparse_nodes(sparse)] == ["SparseConv"]
    assert report.nothing_converted is None
    _check_same(m, sparse)


def test_non_finite_batchnorm_folded_in_stays_dense():
    """A BatchNormalization that convert fuses (not folded beforehand: an Add sits between)."""
    rng = np.random.default_rng(43)
    M = 16
    var = rng.uniform(0.5, 2, M).astype(np.float32)
    s = _poison(rng.uniform(0.5, 2, M), 4, np.nan)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "k"], ["c2"]),
             helper.make_node("BatchNormalization", ["c2", "s", "b", "mu", "var"], ["y"])]
    m = model_of(nodes, [vi("x", [1, 8, 4, 4])], [vi("y", [1, M, 4, 4])],
                 [init("w", _conv_w(rng, M, 8)), init("k", rng.standard_normal((1, M, 1, 1)).astype(np.float32)),
                  init("s", s), init("b", rng.standard_normal(M).astype(np.float32)),
                  init("mu", rng.standard_normal(M).astype(np.float32)), init("var", var)])
    sparse, report = convert(m)
    assert report.layers[0].reason == NONFINITE and not sparse_nodes(sparse)
    assert report.nothing_converted == "nothing converted: 0 of 1 layer(s) sparse (1 non-finite weights)"
    _check_same(m, sparse)


@pytest.mark.parametrize("what", ["weight", "bias"])
def test_non_finite_depthwise_stays_dense(what):
    rng = np.random.default_rng(44)
    C = 16
    dw = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
    db = rng.standard_normal(C).astype(np.float32)
    if what == "weight":
        dw = _poison(dw, 10, np.nan)
    else:
        db = _poison(db, 2, np.inf)
    # the sparse op before it (after it, its skipped zero weights would not see the NaN inputs
    # a dense conv multiplies by 0: a difference of sparse ops on non-finite inputs)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="pw0"),
             helper.make_node("Conv", ["a", "dw", "db"], ["y"], name="dw", group=C, pads=[1, 1, 1, 1])]
    m = model_of(nodes, [vi("x", [1, C, 6, 6])], [vi("y", None)],
                 [init("w0", _conv_w(rng, C, C)), init("dw", dw), init("db", db)])
    ok = m.__class__()
    ok.CopyFrom(m)
    ok.graph.initializer[1].CopyFrom(init("dw", np.nan_to_num(dw, nan=0.5)))
    ok.graph.initializer[2].CopyFrom(init("db", np.nan_to_num(db, posinf=0.5)))
    assert rows_by_name(convert(ok)[1])["dw"].decision == "depthwise"
    sparse, report = convert(m)
    rows = rows_by_name(report)
    assert rows["dw"].decision == "dense" and rows["dw"].reason == NONFINITE
    assert rows["pw0"].decision == "sparse"
    _check_same(m, sparse)


def _recurrent(op, rng, D=1, H=16, I=16, attrs=None, poison=None):
    """An ONNX LSTM/GRU whose W and R are bank-balanced at 25% (convertible), optionally with
    attributes and one weight or bias value poisoned: poison = (tensor, value)."""
    G = 4 if op == "LSTM" else 3
    W = masked(rng, (D, G * H, I), bank_mask(rng, D * G * H, I, 8, 2).reshape(D, G * H, I)) * 0.3
    R = masked(rng, (D, G * H, H), bank_mask(rng, D * G * H, H, 8, 2).reshape(D, G * H, H)) * 0.3
    B = (0.1 * rng.standard_normal((D, 2 * G * H))).astype(np.float32)
    t = {"W": W, "R": R, "B": B}
    if poison:
        t[poison[0]] = _poison(t[poison[0]], 5, poison[1])
    outs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    node = helper.make_node(op, ["X", "W", "R", "B"], outs, name="rnn", hidden_size=H,
                            direction="bidirectional" if D == 2 else "forward", **(attrs or {}))
    return model_of([node], [vi("X", ["S", "N", I])], [vi(o, None) for o in outs],
                    [init(k, v) for k, v in t.items()])


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("poison", [("W", np.nan), ("R", np.inf), ("B", -np.inf)])
def test_non_finite_recurrent_weights_stay_dense(op, poison):
    rng = np.random.default_rng(45)
    ok = _recurrent(op, rng)
    assert all(l.decision == "sparse" for l in convert(ok)[1].layers)
    m = _recurrent(op, np.random.default_rng(45), poison=poison)
    sparse, report = convert(m)
    assert all(l.decision == "dense" and l.reason == NONFINITE for l in report.layers)
    assert [n.op_type for n in sparse.graph.node] == [op]
    _check_same(m, sparse, overrides={"S": 3, "N": 2})


@pytest.mark.parametrize("op,attrs,reason", [
    ("LSTM", {"activations": ["Sigmoid", "Relu", "Tanh"]}, "activations"),
    ("LSTM", {"activations": ["HardSigmoid", "Tanh", "Tanh"], "activation_alpha": [0.3, 1.0, 1.0],
              "activation_beta": [0.4, 0.0, 0.0]}, "activations"),
    ("LSTM", {"activation_alpha": [0.5, 1.0, 1.0]}, "activation_alpha"),
    ("LSTM", {"clip": 0.5}, "clip"),
    ("LSTM", {"input_forget": 1}, "input_forget"),
    ("GRU", {"activations": ["Sigmoid", "Relu"]}, "activations"),
    ("GRU", {"activation_beta": [0.0, 0.0]}, "activation_beta"),
    ("GRU", {"clip": 0.25}, "clip"),
])
def test_recurrent_attributes_sparse_ops_do_not_implement_stay_dense(op, attrs, reason):
    rng = np.random.default_rng(46)
    m = _recurrent(op, rng, attrs=attrs)
    sparse, report = convert(m)
    assert all(l.decision == "dense" and reason in l.reason for l in report.layers), report.layers
    assert [n.op_type for n in sparse.graph.node] == [op]
    assert report.nothing_converted is not None
    _check_same(m, sparse, overrides={"S": 4, "N": 2})


def test_recurrent_default_activations_spelled_out_still_convert():
    rng = np.random.default_rng(47)
    m = _recurrent("GRU", rng, D=2, attrs={"activations": ["Sigmoid", "Tanh"] * 2})
    sparse, report = convert(m)
    assert [n.op_type for n in sparse.graph.node] == ["SparseGRU"]
    _check_same(m, sparse, overrides={"S": 4, "N": 2})


@pytest.mark.parametrize("what", ["weight", "bias", "batchnorm"])
def test_non_finite_predicted_conv_candidates_are_not_replaced(what):
    from sparsekit.calibration import Calibration
    from sparsekit.predict import rewrite_predicted
    rng = np.random.default_rng(48)
    M, C = 8, 4
    W = rng.standard_normal((M, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    s = np.ones(M, np.float32)
    if what == "weight":
        W = _poison(W, 3, np.inf)
    elif what == "bias":
        b = _poison(b, 1, np.nan)
    else:
        s = _poison(s, 6, np.nan)
    zeros = np.zeros(M, np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["y"])]
    m = model_of(nodes, [vi("x", ["N", C, 6, 6])], [vi("y", None)],
                 [init("w", W), init("b", b), init("s", s), init("bb", zeros), init("mu", zeros),
                  init("var", np.ones(M, np.float32))])
    out, rows = rewrite_predicted(m)
    assert rows[0].reason == NONFINITE and not rows[0].replaced
    assert [n.op_type for n in out.graph.node] == ["Conv", "BatchNormalization", "Relu"]
    cal = Calibration({"x": rng.standard_normal((8, C, 6, 6)).astype(np.float32)}, 4)
    sparse, report = convert(m, predict_relu=True, calibration=cal, min_zeros=0.0)
    assert not sparse_nodes(sparse)
    assert [(r.name, r.replaced, r.reason) for r in report.predicted] == [("conv", False, NONFINITE)]
    _check_same(m, sparse, overrides={"N": 2})


# ---------------------------------------------------------------------------------------------
# conv geometry the sparse conv ops refuse (issue 21) stays in onnxruntime

@pytest.mark.parametrize("k,attrs", [
    (1, {"pads": [1, 1, 1, 1]}),                      # a padded 1x1: pad == extent
    (3, {"pads": [0, 3, 0, 0]}),                      # one pad past the 3x3 extent
    (3, {"pads": [2, 2, 2, 2], "dilations": [1, 1]}),  # below the extent: converted
    (3, {"pads": [4, 4, 4, 4], "dilations": [2, 2]}),  # dilated extent 5: converted
    (1, {"strides": [5000, 1]}),                      # stride past MAX_STRIDE
])
def test_conv_geometry_the_sparse_ops_refuse_stays_dense(k, attrs):
    """Stock Conv accepts pads as wide as the kernel (outputs of bias only); SparseConv,
    DepthwiseConv and PredictedConv refuse them at session creation, so convert and predict
    must keep such a layer dense, with the reason, and the model must still run the same."""
    from sparsekit.format import conv_geometry_problem
    rng = np.random.default_rng(49)
    M, C = 16, 8
    pads = attrs.get("pads", [0, 0, 0, 0])
    strides, dil = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    refused = conv_geometry_problem([k, k], strides, dil, pads)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", **attrs),
             helper.make_node("Relu", ["c"], ["y"])]
    m = model_of(nodes, [vi("x", [2, C, 7, 7])], [vi("y", None)],
                 [init("w", _conv_w(rng, M, C, k)), init("b", rng.standard_normal(M).astype(np.float32))])
    sparse, report = convert(m)
    row = report.layers[0]
    if refused:
        assert row.decision == "dense" and row.reason == refused, row
        assert not sparse_nodes(sparse)
    else:
        assert row.decision == "sparse", row
        assert [n.op_type for n in sparse_nodes(sparse)] == ["SparseConv"]
    _check_same(m, sparse)
    # the same rule keeps PredictedConv away, and the C++ op agrees with the Python rule
    from sparsekit.predict import rewrite_predicted
    out, rows = rewrite_predicted(m)
    assert rows[0].replaced == (not refused) and (not refused or rows[0].reason == refused)
    sparse_conv = sparsekit.pack.make_sparse_conv_node(
        "sc", "x", "y", _conv_w(rng, M, C, k), rng.standard_normal(M).astype(np.float32),
        strides=strides, pads=pads, dilations=dil, fmt="bsr", block=4)
    one = model_of([sparse_conv[0]], [vi("x", [2, C, 7, 7])], [vi("y", None)], sparse_conv[1])
    one.opset_import.append(sparsekit.format.opset_import())
    if refused:
        with pytest.raises(Exception, match="pads|strides"):
            sparsekit.session(one)
    else:
        sparsekit.session(one)
