"""Weights left on disk (sparsekit/external.py): a lazily loaded model prunes and converts to the
same bytes as the loaded one, holding one weight at a time, and streams into its output."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsekit
from ort_helpers import run_stock
from sparsekit import external
from sparsekit.errors import SparsekitError


def _stack(folder, layers=4, k=64, files=2, conv=True):
    """MatMul layers (and one Conv + Relu) whose weights sit in `files` side files, one of them
    in a subfolder; returns the .onnx path."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights").mkdir(exist_ok=True)
    names = [f"part{i}.bin" if i == 0 else f"weights/part{i}.bin" for i in range(files)]
    handles = [open(folder / n, "wb") for n in names]
    inits, nodes = [], []
    x = "x"
    if conv:
        w = rng.standard_normal((k, 3, 3, 3)).astype(np.float32)
        inits.append(_external(w, "conv.w", handles[0], names[0]))
        nodes += [helper.make_node("Conv", ["img", "conv.w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["c"], ["r"], name="relu"),
                  helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
                  helper.make_node("Flatten", ["g"], ["x"], name="flat")]
    for i in range(layers):
        w = (rng.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32)
        f = i % files
        inits.append(_external(w, f"w{i}", handles[f], names[f]))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        x = f"h{i}"
    for h in handles:
        h.close()
    g = helper.make_graph(nodes, "stack",
                          [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, k])], inits)
    path = folder / "model.onnx"
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _external(arr, name, handle, location):
    offset = handle.tell()
    handle.write(arr.tobytes())
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=arr.shape,
                    data_location=TensorProto.EXTERNAL)
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(arr.nbytes))):
        t.external_data.add(key=k, value=v)
    return t


def _lazy(path):
    m = onnx.load(str(path), load_external_data=False)
    assert external.defer(m, str(path.parent)) > 0
    return m


@pytest.mark.parametrize("pattern,sparsity", [("block", 0.9), ("bank", 0.75), ("unstructured", 0.8)])
def test_lazy_prune_and_convert_give_the_same_bytes(tmp_path, pattern, sparsity):
    path = _stack(tmp_path / "m")
    eager = onnx.load(str(path))
    lazy = _lazy(path)
    before = lazy.SerializeToString()
    pe, re_ = sparsekit.prune(eager, pattern, sparsity)
    pl, rl = sparsekit.prune(lazy, pattern, sparsity)
    assert lazy.SerializeToString() == before                 # the input proto is untouched
    assert re_.to_dict() == rl.to_dict()
    # the pruned weights are on disk (scratch), not in the proto
    assert external.has_deferred(pl) and pl.ByteSize() < 10_000
    assert external.materialized(pl).SerializeToString() == pe.SerializeToString()
    ce, cre = sparsekit.convert(pe)
    cl, crl = sparsekit.convert(pl)
    assert cre.to_dict() == crl.to_dict() and crl.totals["converted"] >= 4
    assert all(external.is_deferred(t) for t in cl.graph.initializer if t.name.endswith(".values"))
    assert external.materialized(cl).SerializeToString() == ce.SerializeToString()
    img = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(sparsekit.session(cl).run(None, {"img": img})[0],
                               run_stock(pe, {"img": img}), rtol=1e-4, atol=1e-5)


def test_save_streams_every_tensor_into_the_output_side_file(tmp_path):
    from sparsekit import io
    path = _stack(tmp_path / "m", files=3)
    pruned, _ = sparsekit.prune(_lazy(path), "block", 0.5)
    before = pruned.SerializeToString()
    io.save_model(pruned, tmp_path / "out.onnx", external_data=True)
    assert pruned.SerializeToString() == before        # the in-memory model is left as it was
    head = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    assert {e.value for t in head.graph.initializer for e in t.external_data
            if e.key == "location"} == {"out.onnx.data"}
    back = onnx.load(str(tmp_path / "out.onnx"))
    want = external.materialized(pruned)
    for a, b in zip(back.graph.initializer, want.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_short_or_missing_side_file_is_a_one_line_error(tmp_path):
    path = _stack(tmp_path / "m", files=2)
    data = tmp_path / "m" / "weights" / "part1.bin"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(SparsekitError, match="holds fewer bytes"):
        _lazy(path)
    data.unlink()
    with pytest.raises(SparsekitError, match="not found"):
        _lazy(path)
