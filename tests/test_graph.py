"""sparsekit.graph's rewriting helpers: pads against stock onnxruntime, chain replacement, names."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ort_helpers import run_stock
from sparsekit.errors import SparsekitError
from sparsekit.graph import NameFilter, Replacement, replace_chains, resolve_pads


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET"])
@pytest.mark.parametrize("size,k,stride,dil", [(7, 3, 1, 1), (8, 3, 2, 1), (9, 4, 3, 1),
                                               (10, 3, 2, 2), (5, 2, 2, 1), (12, 5, 1, 2)])
def test_resolve_pads_matches_onnxruntime(auto_pad, size, k, stride, dil):
    """A Conv with auto_pad and the same Conv with the resolved explicit pads give the same
    output in stock onnxruntime."""
    if dil > 1 and auto_pad.startswith("SAME"):
        pytest.skip("stock onnxruntime's Conv refuses dilation with SAME padding")
    rng = np.random.default_rng(size * 31 + k)
    x = rng.standard_normal((1, 2, size, size + 1)).astype(np.float32)
    w = rng.standard_normal((3, 2, k, k)).astype(np.float32)
    attrs = dict(strides=[stride, stride], dilations=[dil, dil])
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=auto_pad, **attrs,
                            **({"pads": [1, 0, 0, 1]} if auto_pad == "NOTSET" else {}))
    pads, why = resolve_pads(node, x.shape[2:], [k, k], [stride] * 2, [dil] * 2)
    assert why == "" and len(pads) == 4

    def run(n):
        g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
        return run_stock(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), {"x": x})

    explicit = helper.make_node("Conv", ["x", "w"], ["y"], pads=pads, **attrs)
    np.testing.assert_allclose(run(explicit), run(node), rtol=1e-5, atol=1e-5)


def test_resolve_pads_says_why_it_cannot():
    same = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])
    assert resolve_pads(same, [None, None], [3, 3], [2, 2], [1, 1]) == \
        (None, "auto_pad=SAME_UPPER with stride 2 needs a static input size")
    # stride 1: the padding does not depend on the input size
    assert resolve_pads(same, [], [3, 3], [1, 1], [1, 1]) == ([1, 1, 1, 1], "")
    bad = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1])
    assert resolve_pads(bad, [4, 4], [3, 3], [1, 1], [1, 1])[1] == "pads [1, 1] (expected 4 values)"


def test_name_filter():
    f = NameFilter(["^a", "b$"], "x")
    assert [n for n in ("ab", "cb", "ax", "c") if f.selects(n)] == ["ab", "cb"]
    assert f.why_not("ax") == "excluded (matches exclude 'x')"
    assert f.why_not("c") == "not included (does not match include '^a' or 'b$')"
    assert NameFilter().selects("anything")
    with pytest.raises(SparsekitError, match="not a valid regex"):
        NameFilter("(")
    with pytest.raises(SparsekitError, match="regular expression string"):
        NameFilter([3])


def _chain_model():
    """x -> Relu(a) -> Neg(b) -> Abs(c) -> y, with a value_info for b and an initializer
    'n.w' that is already taken by a graph tensor name."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("Neg", ["a"], ["b"], name="n"),
             helper.make_node("Add", ["b", "n.w"], ["c"], name="add"),
             helper.make_node("Abs", ["c"], ["y"], name="abs")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                          [numpy_helper.from_array(np.full(4, 2.0, np.float32), "n.w")],
                          value_info=[helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_replace_chains_swaps_renames_and_cleans_up():
    m = _chain_model()
    x = np.array([-2.0, -1.0, 1.0, 3.0], np.float32)
    before = run_stock(m, {"x": x})
    # Neg -> Add(n.w) becomes Sub(n.w, .) with a new constant of the same name: renamed
    new = helper.make_node("Sub", ["n.w", "a"], ["c"], name="sub")
    const = numpy_helper.from_array(np.full(4, 2.0, np.float32), "n.w")
    g = m.graph
    replace_chains(m, [Replacement([g.node[1], g.node[2]], new, [const], own_inputs=[0])])
    assert [n.op_type for n in m.graph.node] == ["Relu", "Sub", "Abs"]
    assert [t.name for t in m.graph.initializer] == ["n.w_1"]   # the old one nobody reads is gone
    assert m.graph.node[1].input[:] == ["n.w_1", "a"]
    assert [v.name for v in m.graph.value_info] == []            # 'b' is no longer produced
    onnx.checker.check_model(m)
    np.testing.assert_allclose(run_stock(m, {"x": x}), before)
