"""Shared builders for the onnxruntime custom-op tests: sparse weights with a known pattern,
ai.sparsekit models (through sparsekit.pack), and the equivalent dense ONNX graphs, which run in
stock onnxruntime as the independent reference."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from sparsekit.format import ragged_keep
from sparsekit.format import opset_import

IR_VERSION = 9  # onnxruntime 1.17+ reads IR 9; onnx >= 1.16 would otherwise write a newer one
ONNX_OPSET = 17

# pattern name -> (format, block)
PATTERNS = {"bsr1": ("bsr", 1), "bsr4": ("bsr", 4), "bank1": ("bank", 1), "bank4": ("bank", 4)}
BANK_SIZE = 16


def bank_for(K: int) -> int:
    """The bank size the tests use for a reduction length K (banks must not exceed K)."""
    return BANK_SIZE if K >= BANK_SIZE else 4


def make_model(nodes, inputs, outputs, inits=(), sparse=True) -> onnx.ModelProto:
    g = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits))
    ops = [helper.make_opsetid("", ONNX_OPSET)] + ([opset_import()] if sparse else [])
    return helper.make_model(g, opset_imports=ops, ir_version=IR_VERSION)


def vinfo(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def run_stock(model: onnx.ModelProto, feeds: dict, threads: int = 1):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)[0]


def _values(rng, shape):
    # magnitudes in [0.25, 1.25): a kept weight is never accidentally zero
    return (rng.uniform(0.25, 1.25, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)


def sparse_matrix(rng, M, K, sparsity, pattern, bank_size=BANK_SIZE):
    """Dense W [M, K] whose zeros follow `pattern` at about `sparsity`, built from masks here."""
    fmt, B = PATTERNS[pattern]
    G = -(-M // B)
    if fmt == "bsr":
        gmask = rng.random((G, K)) >= sparsity
    else:
        keep = int(round(bank_size * (1.0 - sparsity)))
        gmask = np.zeros((G, K), dtype=bool)
        for g in range(G):
            for lo in range(0, K, bank_size):
                L = min(bank_size, K - lo)
                n = keep if L == bank_size else ragged_keep(L, keep, bank_size)
                gmask[g, lo + rng.choice(L, n, replace=False)] = True
    mask = np.repeat(gmask, B, axis=0)[:M]
    return np.where(mask, _values(rng, (M, K)), 0.0).astype(np.float32)


def conv_weight(rng, M, C, kh, kw, sparsity, pattern, bank_size=BANK_SIZE):
    return sparse_matrix(rng, M, C * kh * kw, sparsity, pattern, bank_size).reshape(M, C, kh, kw)


def epilogue_nodes(src, out, bias_added, activation, clip, residual, residual_after_act):
    """Dense equivalent of the fused epilogue: [+ residual] -> act [-> + residual]."""
    nodes, cur, i = [], src, 0

    def tmp():
        nonlocal i
        i += 1
        return f"_t{i}"

    if residual and not residual_after_act:
        t = tmp()
        nodes.append(helper.make_node("Add", [cur, residual], [t]))
        cur = t
    if activation == "relu":
        t = tmp()
        nodes.append(helper.make_node("Relu", [cur], [t]))
        cur = t
    elif activation == "clip":
        t = tmp()
        nodes.append(helper.make_node("Clip", [cur, "_clip_lo", "_clip_hi"], [t]))
        cur = t
    if residual and residual_after_act:
        t = tmp()
        nodes.append(helper.make_node("Add", [cur, residual], [t]))
        cur = t
    nodes.append(helper.make_node("Identity", [cur], [out]))
    inits = []
    if activation == "clip":
        inits = [numpy_helper.from_array(np.array(clip[0], np.float32), "_clip_lo"),
                 numpy_helper.from_array(np.array(clip[1], np.float32), "_clip_hi")]
    return nodes, inits


def assert_close(y, ref, K):
    assert y.shape == ref.shape, (y.shape, ref.shape)
    scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=2e-6 * np.sqrt(max(K, 1)) * scale)
