"""The fuzz harness of the custom-op library (issue 21): mutated single-op models of every
ai.sparsekit op, each case run in a worker subprocess so that a crash (a signal) or a hang is
counted against the case that caused it instead of ending the run.

A case is a small JSON dict {"id", "op", "kind", "seed"}; :func:`build_case` makes its model and
feeds from them alone (the same case is the same model everywhere).  Mutation kinds:

* ``corrupt:<name>``: the targeted corruptions of tests/test_ort_fuzz.py (imported, not copied);
* ``overwrite:<tensor>``: 1-3 elements of a packed tensor overwritten (indices and row pointers
  near and far out of range; values with large, tiny, NaN and Inf floats);
* ``truncate:<tensor>`` / ``extend:<tensor>``: a tensor one element (or row) shorter or longer;
* ``dtype:<tensor>``: a tensor cast to another element type;
* ``attr:<name>``: an attribute set to an extreme value (0, -1, 2^20, 2^31, 2^40, NaN, ...);
* ``shape``: run-time input shapes from 0 to 20000 along a dimension;
* ``values``: extreme finite inputs (1e30, denormals; +-3e38 for the recurrent ops);
* ``issue:<name>``: the cases the campaign of issue 21 found (:data:`ISSUE_CASES`).

:func:`run_case` classifies one case: ``refused`` (session creation failed with a message),
``run-error`` (a clean error at run time), ``match`` (ran and equals the reference: the unpacked
dense model in stock onnxruntime), ``no-reference`` (ran; stock onnxruntime cannot run the
dense equivalent), or a failure: ``mismatch``, ``accepted-invalid`` (the tensors cannot be
unpacked yet the session ran), ``harness-error``; the worker adds ``crash`` and ``hang``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

# tests/ only: the repository root would shadow the installed package (which holds the library)
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import sparsekit  # noqa: E402
from ort_helpers import make_model, vinfo  # noqa: E402
from sparsekit.pack import unpack  # noqa: E402
from sparsekit.patterns import bank_mask  # noqa: E402
from sparsekit.predict import make_predicted_conv_node  # noqa: E402
from sparsekit.sequence import make_sparse_gru_node, make_sparse_lstm_node  # noqa: E402
from test_ort_fuzz import MUTATIONS, attr, base_model, get, put, set_attr  # noqa: E402

OPS = ["SparseConv", "SparseGemm", "DepthwiseConv", "PredictedConv", "SparseLSTM", "SparseGRU"]
FAILURES = ("mismatch", "accepted-invalid", "harness-error", "crash", "hang")

# per op: (base kind of test_ort_fuzz or builder here, packed tensors, attributes to stress)
_TENSORS = {
    "SparseConv": [".values", ".indices", ".group_ptr", ".bias"],
    "SparseGemm": [".values", ".indices", ".group_ptr", ".bias"],
    "DepthwiseConv": [".W", ".bias"],
    "PredictedConv": [".W", ".B", ".W_q", ".W_q_scale"],
    "SparseLSTM": [".W_values", ".W_indices", ".R_values", ".R_indices", ".B"],
    "SparseGRU": [".W_values", ".W_indices", ".R_values", ".R_indices", ".B"],
}
_ATTRS = {
    "SparseConv": ["kernel_shape", "strides", "pads", "dilations", "in_channels", "out_channels",
                   "block", "bank_size", "activation", "clip_min", "clip_max"],
    "SparseGemm": ["in_features", "out_features", "block", "activation", "clip_max"],
    "DepthwiseConv": ["kernel_shape", "strides", "pads", "activation", "clip_max"],
    "PredictedConv": ["kernel_shape", "strides", "pads", "dilations", "margin", "clip_max",
                      "pool_kernel", "pool_strides", "pool_pads", "activation"],
    "SparseLSTM": ["hidden_size", "input_size", "direction", "w_bank_size", "r_bank_size",
                   "activations", "clip"],
    "SparseGRU": ["hidden_size", "input_size", "direction", "w_bank_size", "r_bank_size",
                  "linear_before_reset", "activations", "clip"],
}
_CORRUPT = {"SparseConv": ("conv/", "bank/"), "SparseGemm": ("gemm/",), "DepthwiseConv": ("dw/",)}
_INTS = [0, -1, 1, 2, 7, 2**20, 2**31 - 1, 2**31, 2**40, -2**31]
_FLOATS = [float("nan"), float("inf"), float("-inf"), 3e38, -1.0, 0.0]
RECURRENT_H, RECURRENT_I = 8, 12
PRED = dict(M=6, C=3, k=3)


# ---------------------------------------------------------------------------------------------
# base models (valid): test_ort_fuzz's for SparseConv/SparseGemm/DepthwiseConv, built here for
# the other three

def _predicted(seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    M, C, k = PRED["M"], PRED["C"], PRED["k"]
    W = rng.standard_normal((M, C, k, k)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    # the largest margin: every output computed in full, so Conv + ReLU is the exact reference
    node, inits = make_predicted_conv_node("pc", "X", "Y", W, b, pads=(1, 1, 1, 1),
                                           margin=2**24)
    return make_model([node], [vinfo("X", ["N", C, "H", "W"])], [vinfo("Y", None)], inits)


def _recurrent(op: str, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    H, I = RECURRENT_H, RECURRENT_I
    G = 4 if op == "SparseLSTM" else 3
    W = rng.standard_normal((1, G * H, I)).astype(np.float32) * 0.5
    R = rng.standard_normal((1, G * H, H)).astype(np.float32) * 0.5
    W *= bank_mask(W.reshape(G * H, I), 0.5, bank_size=4).reshape(W.shape)
    R *= bank_mask(R.reshape(G * H, H), 0.5, bank_size=4).reshape(R.shape)
    B = (0.3 * rng.standard_normal((1, 2 * G * H))).astype(np.float32)
    if op == "SparseLSTM":
        node, inits = make_sparse_lstm_node("rnn", "X", ["Y", "Y_h", "Y_c"], W, R, B,
                                            w_bank_size=4, r_bank_size=4)
    else:
        node, inits = make_sparse_gru_node("rnn", "X", ["Y", "Y_h"], W, R, B, w_bank_size=4,
                                           r_bank_size=4, linear_before_reset=seed % 2)
    return make_model([node], [vinfo("X", ["S", "N", I])], [vinfo(o, None) for o in node.output],
                      inits)


def base(op: str, seed: int, conv_kind: Optional[str] = None) -> onnx.ModelProto:
    if op == "SparseConv":
        return base_model(conv_kind or ("conv" if seed % 2 == 0 else "bank"), seed % 7)
    if op == "SparseGemm":
        return base_model("gemm", seed % 7)
    if op == "DepthwiseConv":
        return base_model("dw", seed % 7)
    if op == "PredictedConv":
        return _predicted(seed % 7)
    return _recurrent(op, seed % 7)


def default_shape(op: str) -> Dict[str, tuple]:
    return {"SparseConv": {"X": (1, 5, 6, 5)},
            "SparseGemm": {"X": (3, 40)}, "DepthwiseConv": {"X": (1, 4, 6, 5)},
            "PredictedConv": {"X": (2, PRED["C"], 6, 5)},
            "SparseLSTM": {"X": (3, 2, RECURRENT_I)}, "SparseGRU": {"X": (3, 2, RECURRENT_I)}}[op]


def _channels(m: onnx.ModelProto) -> int:
    return int(m.graph.input[0].type.tensor_type.shape.dim[1].dim_value)


# ---------------------------------------------------------------------------------------------
# mutations

def _has(m, suffix) -> bool:
    return any(t.name.endswith(suffix) for t in m.graph.initializer)


def _overwrite(m, suffix, r):
    arr = get(m, suffix).copy()
    if arr.size == 0:
        return
    flat = arr.reshape(-1)
    for _ in range(int(r.integers(1, 4))):
        i = r.integers(flat.size)
        if arr.dtype.kind == "f":
            flat[i] = r.choice([0.0, 1.0, -3.5, 1e30, -1e30, 1e-40, float(r.standard_normal())])
        else:
            info = np.iinfo(arr.dtype)
            v = r.integers(-3, 80) if r.random() < 0.7 else r.integers(info.min, int(info.max) + 1)
            flat[i] = np.clip(v, info.min, info.max)
    put(m, suffix, arr)


def _resize(m, suffix, longer: bool, r):
    arr = get(m, suffix)
    if arr.ndim == 0 or arr.shape[0] == 0:
        return
    axis = int(r.integers(arr.ndim))
    if longer:
        arr = np.concatenate([arr, np.take(arr, [0], axis=axis)], axis=axis)
    else:
        arr = np.take(arr, range(arr.shape[axis] - 1), axis=axis)
    put(m, suffix, arr)


def _cast(m, suffix, r):
    arr = get(m, suffix)
    choices = [d for d in (np.float64, np.float16, np.float32, np.int64, np.int32, np.uint16,
                           np.uint8, np.int8) if np.dtype(d) != arr.dtype]
    put(m, suffix, arr.astype(choices[r.integers(len(choices))]))


def _extreme_attr(m, name, r):
    cur = attr(m, name)
    if name in ("activation", "direction"):
        set_attr(m, name, ["", "bogus", "relu", "clip", "reverse", "bidirectional"][r.integers(6)])
    elif name == "activations":
        set_attr(m, name, [["Sigmoid", "Relu", "Tanh"], ["Tanh"], ["HardSigmoid", "Tanh", "Tanh"]]
                 [r.integers(3)])
    elif name in ("clip", "clip_min", "clip_max"):
        set_attr(m, name, float(_FLOATS[r.integers(len(_FLOATS))]))
    elif isinstance(cur, list) or name in ("kernel_shape", "strides", "pads", "dilations",
                                           "pool_kernel", "pool_strides", "pool_pads"):
        n = len(cur) if isinstance(cur, list) and cur else (4 if "pads" in name else 2)
        vals = list(cur) if isinstance(cur, list) and len(cur) == n else [1] * n
        vals[r.integers(n)] = int(_INTS[r.integers(len(_INTS))])
        set_attr(m, name, [int(v) for v in vals])
    else:
        set_attr(m, name, int(_INTS[r.integers(len(_INTS))]))


_SIZES = [0, 1, 2, 3, 5, 8, 64, 300, 20000]


def _shapes(op: str, r) -> Dict[str, tuple]:
    """Run-time shapes from 0 up to 20000 along one dimension (at most ~4M elements)."""
    (name, shape), = default_shape(op).items()
    shape = list(shape)
    free = {"SparseConv": [0, 2, 3], "SparseGemm": [0], "DepthwiseConv": [0, 2, 3],
            "PredictedConv": [0, 2, 3], "SparseLSTM": [0, 1], "SparseGRU": [0, 1]}[op]
    for d in free:
        shape[d] = int(_SIZES[r.integers(len(_SIZES))])
    while int(np.prod(shape)) > 4_000_000:
        d = max(free, key=lambda j: shape[j])
        shape[d] //= 10
    if op == "SparseGemm" and r.random() < 0.3:   # N-D inputs: [..., K]
        shape = [int(_SIZES[r.integers(6)])] + shape
    return {name: tuple(shape)}


def build_case(case: dict) -> Tuple[onnx.ModelProto, Dict[str, np.ndarray], dict]:
    """(model, feeds, facts) for a case: facts["expect"] for the issue cases."""
    op, kind, seed = case["op"], case["kind"], int(case["seed"])
    r = np.random.default_rng(seed)
    facts: dict = {}
    if kind == "selftest:crash":   # the harness's own test: a worker killed by a signal
        import signal
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind.startswith("issue:"):
        m, feeds, facts = ISSUE_BUILDERS[kind[6:]]()
        return m, feeds, facts
    if kind.startswith("corrupt:"):
        name = kind[8:]
        ck, mutate = MUTATIONS[name]
        m = base_model(ck, seed % 7)
        mutate(m, r)
    else:
        m = base(op, seed)
        what, _, arg = kind.partition(":")
        if what == "overwrite" and _has(m, arg):
            _overwrite(m, arg, r)
        elif what in ("truncate", "extend") and _has(m, arg):
            _resize(m, arg, what == "extend", r)
        elif what == "dtype" and _has(m, arg):
            _cast(m, arg, r)
        elif what == "attr":
            _extreme_attr(m, arg, r)
    shapes = _shapes(op, r) if kind == "shape" else default_shape(op)
    if op == "SparseConv":
        shapes = {"X": (shapes["X"][0], _channels(m)) + tuple(shapes["X"][2:])}
    feeds = {}
    for k, s in shapes.items():
        x = r.standard_normal(s).astype(np.float32)
        if kind == "values":
            big = 3e38 if op in ("SparseLSTM", "SparseGRU") else 1e30
            x = (np.sign(x) * r.choice([big, 1e-40, 1.0], s)).astype(np.float32)
        feeds[k] = x
    return m, feeds, facts


def sample_cases(per_op: int, seed: int, ops=OPS) -> List[dict]:
    """A seeded sample: for each op every mutation kind in turn (targeted corruptions first),
    ``per_op`` cases per op."""
    rng = np.random.default_rng(seed)
    cases = []
    for op in ops:
        kinds = [f"corrupt:{n}" for n in MUTATIONS if n.startswith(_CORRUPT.get(op, ("-",)))]
        generic = ([f"{w}:{t}" for t in _TENSORS[op] for w in ("overwrite", "truncate", "extend",
                                                              "dtype")]
                   + [f"attr:{a}" for a in _ATTRS[op]] + ["shape"] * 6 + ["values"] * 2)
        rng.shuffle(kinds)
        order = list(generic)
        rng.shuffle(order)
        # interleave: targeted corruptions and generic kinds share the budget
        mixed = [k for pair in zip(order, kinds) for k in pair] + order[len(kinds):] + \
            kinds[len(order):]
        for i in range(per_op):
            kind = mixed[i % len(mixed)]
            s = int(rng.integers(2**31))
            cases.append({"id": f"{op}/{kind}#{s}", "op": op, "kind": kind, "seed": s})
    return cases


# ---------------------------------------------------------------------------------------------
# the reference: the dense model the (possibly mutated) sparse node stands for, in stock
# onnxruntime

class NoReference(Exception):
    """The sparse node's tensors cannot be unpacked into a dense model."""


def _tensors(m) -> Dict[str, np.ndarray]:
    return {t.name.rsplit(".", 1)[-1]: numpy_helper.to_array(t) for t in m.graph.initializer}


def _attrs(n) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def _epilogue(a: dict, src: str, nodes, inits, out="Y", default_act="none"):
    act = a.get("activation", default_act)
    act = act.decode() if isinstance(act, bytes) else act
    if act == "relu":
        nodes.append(helper.make_node("Relu", [src], [out]))
    elif act == "clip":
        lo, hi = float(a.get("clip_min", -np.inf)), float(a.get("clip_max", np.inf))
        inits += [numpy_helper.from_array(np.array(lo, np.float32), "_lo"),
                  numpy_helper.from_array(np.array(hi, np.float32), "_hi")]
        nodes.append(helper.make_node("Clip", [src, "_lo", "_hi"], [out]))
    elif act == "none":
        nodes.append(helper.make_node("Identity", [src], [out]))
    else:
        raise NoReference(f"activation {act!r}")


def reference_model(m: onnx.ModelProto) -> onnx.ModelProto:
    n = m.graph.node[0]
    a, t = _attrs(n), _tensors(m)
    op = n.op_type
    nodes, inits = [], []
    x = [vinfo("X", None)]
    try:
        if op in ("SparseConv", "SparseGemm"):
            fmt = a["format"].decode() if isinstance(a["format"], bytes) else a["format"]
            if op == "SparseConv":
                kh, kw = a["kernel_shape"]
                M, K = int(a["out_channels"]), int(a["in_channels"]) * kh * kw
            else:
                M, K = int(a["out_features"]), int(a["in_features"])
            W2 = unpack({"values": t["values"], "indices": t["indices"],
                         "group_ptr": t.get("group_ptr")}, M, K, fmt, int(a["block"]),
                        a.get("bank_size"))
            if op == "SparseConv":
                inits.append(numpy_helper.from_array(W2.reshape(M, -1, kh, kw), "W"))
                ins = ["X", "W"] + (["B"] if "bias" in t else [])
                nodes.append(helper.make_node("Conv", ins, ["C0"], strides=a.get("strides", [1, 1]),
                                              pads=a.get("pads", [0, 0, 0, 0]),
                                              dilations=a.get("dilations", [1, 1])))
                src = "C0"
            else:
                inits.append(numpy_helper.from_array(np.ascontiguousarray(W2.T), "W"))
                nodes.append(helper.make_node("MatMul", ["X", "W"], ["C0"]))
                src = "C0"
                if "bias" in t:
                    nodes.append(helper.make_node("Add", ["C0", "B"], ["C1"]))
                    src = "C1"
            if "bias" in t:
                inits.append(numpy_helper.from_array(t["bias"].astype(np.float32), "B"))
            _epilogue(a, src, nodes, inits)
        elif op in ("DepthwiseConv", "PredictedConv"):
            W = t["W"].astype(np.float32)
            b = t.get("bias", t.get("B"))
            inits.append(numpy_helper.from_array(W, "W"))
            ins = ["X", "W"]
            if b is not None:
                inits.append(numpy_helper.from_array(b.astype(np.float32), "B"))
                ins.append("B")
            kw = dict(strides=a.get("strides", [1, 1]), pads=a.get("pads", [0, 0, 0, 0]))
            if op == "DepthwiseConv":
                kw["group"] = int(W.shape[0])
            else:
                kw["dilations"] = a.get("dilations", [1, 1])
            nodes.append(helper.make_node("Conv", ins, ["C0"], **kw))
            if op == "PredictedConv" and "pool_kernel" in a:
                _epilogue(a, "C0", nodes, inits, out="A0")
                nodes.append(helper.make_node("MaxPool", ["A0"], ["Y"], kernel_shape=a["pool_kernel"],
                                              strides=a.get("pool_strides", [1, 1]),
                                              pads=a.get("pool_pads", [0, 0, 0, 0])))
            else:
                _epilogue(a, "C0", nodes, inits)
        else:   # SparseLSTM / SparseGRU
            G = 4 if op == "SparseLSTM" else 3
            H, I = int(a["hidden_size"]), int(a["input_size"])
            d = a.get("direction", b"forward")
            d = d.decode() if isinstance(d, bytes) else d
            D = 2 if d == "bidirectional" else 1
            W = unpack({"values": t["W_values"], "indices": t["W_indices"]}, D * G * H, I, "bank",
                       1, int(a["w_bank_size"])).reshape(D, G * H, I)
            R = unpack({"values": t["R_values"], "indices": t["R_indices"]}, D * G * H, H, "bank",
                       1, int(a["r_bank_size"])).reshape(D, G * H, H)
            inits += [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
            ins = ["X", "W", "R"]
            if "B" in t:
                inits.append(numpy_helper.from_array(t["B"].astype(np.float32), "B"))
                ins.append("B")
            extra = {k: a[k] for k in ("activations", "clip", "linear_before_reset") if k in a}
            extra = {k: ([s.decode() if isinstance(s, bytes) else s for s in v]
                         if k == "activations" else v) for k, v in extra.items()}
            nodes.append(helper.make_node(op[6:], ins, list(n.output), hidden_size=H, direction=d,
                                          **extra))
            return make_model(nodes, x, [vinfo(o, None) for o in n.output], inits, sparse=False)
    except NoReference:
        raise
    except Exception as e:   # the tensors do not describe any dense weight
        raise NoReference(f"{type(e).__name__}: {e}") from e
    return make_model(nodes, x, [vinfo("Y", None)], inits, sparse=False)


def _stock(model, feeds):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def _same(got, want, op: str, K: int = 64) -> Optional[str]:
    """None when the outputs agree (NaN where NaN, same infinities); PredictedConv may also
    give 0 where its prediction skipped an output (and <= with a pool)."""
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            return f"shape {list(g.shape)} vs reference {list(w.shape)}"
        if not np.array_equal(np.isnan(g), np.isnan(w)):
            return f"NaN in {int(np.isnan(g).sum())} outputs, reference {int(np.isnan(w).sum())}"
        fin = np.isfinite(w) & np.isfinite(g)
        if not np.array_equal(np.isinf(g), np.isinf(w)) or \
                not np.array_equal(np.sign(g[np.isinf(g)]), np.sign(w[np.isinf(w)])):
            return "infinities differ from the reference"
        if not fin.any():
            continue
        with np.errstate(all="ignore"):
            g, w = np.where(fin, g, 0), np.where(fin, w, 0)
        scale = max(1.0, float(np.abs(w[fin]).max()))
        close = np.abs(g - w) <= 1e-4 * np.abs(w) + 2e-6 * np.sqrt(K) * scale * 10
        if op == "PredictedConv":
            close |= (g == 0) | ((g >= 0) & (g <= w))
        close |= ~fin
        if not close.all():
            i = int(np.argmin(close.reshape(-1)))
            return (f"{int((~close).sum())} outputs differ, e.g. {g.reshape(-1)[i]!r} vs "
                    f"{w.reshape(-1)[i]!r}")
    return None


def _ref_isa(m, feeds):
    old = os.environ.get("SPARSEKIT_ISA")
    os.environ["SPARSEKIT_ISA"] = "ref"
    try:
        return sparsekit.session(m, threads=1).run(None, feeds)
    finally:
        if old is None:
            del os.environ["SPARSEKIT_ISA"]
        else:
            os.environ["SPARSEKIT_ISA"] = old


def run_case(case: dict) -> dict:
    """Run one case in this process: {"id", "outcome", "detail"}."""
    out = {"id": case["id"], "op": case["op"], "kind": case["kind"]}
    try:
        m, feeds, facts = build_case(case)
    except Exception as e:
        return {**out, "outcome": "harness-error", "detail": f"build: {type(e).__name__}: {e}"}
    try:
        s = sparsekit.session(m, threads=1)
    except Exception as e:
        msg = str(e).strip()
        return {**out, "outcome": "refused" if msg else "harness-error",
                "detail": msg.splitlines()[0][:300] if msg else "refused without a message"}
    try:
        got = s.run(None, feeds)
    except Exception as e:
        return {**out, "outcome": "run-error", "detail": str(e).strip().splitlines()[0][:300]}
    try:
        ref = reference_model(m)
    except NoReference as e:
        return {**out, "outcome": "accepted-invalid", "detail": str(e)[:300]}
    recurrent = case["op"] in ("SparseLSTM", "SparseGRU")
    if recurrent and any(0 in v.shape for v in feeds.values()):
        # stock LSTM/GRU abort on batch 0 and leave Y_h undefined for an empty sequence
        return {**out, "outcome": "no-reference", "detail": "empty sequence or batch"}
    print("phase reference", flush=True)
    try:
        want = _stock(ref, feeds)
    except Exception as e:
        return {**out, "outcome": "no-reference", "detail": str(e).strip().splitlines()[0][:200]}
    if recurrent and (case["kind"] == "values" or "extreme" in case["kind"]):
        # +-3e38 inputs: which pre-activation sums overflow depends on the summation order, the
        # gates saturate either way; the rule: NaN only where stock onnxruntime has NaN, and
        # every ISA equal to SPARSEKIT_ISA=ref
        for g, w in zip(got, want):
            if (np.isnan(g) & ~np.isnan(w)).any():
                return {**out, "outcome": "mismatch", "detail": f"NaN in {int(np.isnan(g).sum())} "
                        "outputs where stock onnxruntime is finite"}
        want = _ref_isa(m, feeds)
    diff = _same(got, want, case["op"])
    return {**out, "outcome": "match" if diff is None else "mismatch", "detail": diff or ""}


# ---------------------------------------------------------------------------------------------
# the cases issue 21 found, with their outcome once csrc/ applies the new rules

def _issue_pads():
    m = base_model("conv", 0)
    set_attr(m, "pads", [2**20, 0, 0, 0])
    return m, {"X": np.ones((1, 5, 8, 8), np.float32)}, {"expect": "refused"}


def _issue_gru_extreme():
    m = _recurrent("SparseGRU", 3)
    r = np.random.default_rng(21)
    x = (np.sign(r.standard_normal((5, 4, RECURRENT_I))) * 3e38).astype(np.float32)
    return m, {"X": x}, {"expect": "match"}


def _issue_lstm_extreme():
    m = _recurrent("SparseLSTM", 3)
    r = np.random.default_rng(22)
    x = (np.sign(r.standard_normal((5, 4, RECURRENT_I))) * 3e38).astype(np.float32)
    return m, {"X": x}, {"expect": "match"}


def _issue_attr(op, name, value):
    def f():
        m = _recurrent(op, 1)
        set_attr(m, name, value)
        return m, default_inputs(op), {"expect": "refused"}
    return f


def _issue_predicted_nan_bias():
    m = _predicted(0)
    b = get(m, ".B").copy()
    b[2] = np.nan
    put(m, ".B", b)
    return m, default_inputs("PredictedConv"), {"expect": "refused"}


def _issue_depthwise_nan_weight():
    m = base_model("dw", 0)
    w = get(m, ".W").copy()
    w[1, 0, 1, 1] = np.nan
    put(m, ".W", w)
    return m, default_inputs("DepthwiseConv"), {"expect": "refused"}


def default_inputs(op: str) -> Dict[str, np.ndarray]:
    r = np.random.default_rng(5)
    return {k: r.standard_normal(s).astype(np.float32) for k, s in default_shape(op).items()}


ISSUE_BUILDERS = {
    "conv-pads-2^20": _issue_pads,
    "gru-extreme-inputs": _issue_gru_extreme,
    "lstm-extreme-inputs": _issue_lstm_extreme,
    "lstm-activations": _issue_attr("SparseLSTM", "activations", ["Sigmoid", "Relu", "Tanh"]),
    "lstm-clip": _issue_attr("SparseLSTM", "clip", 0.5),
    "gru-activations": _issue_attr("SparseGRU", "activations", ["Sigmoid", "Relu"]),
    "gru-clip": _issue_attr("SparseGRU", "clip", 0.5),
    "predicted-nan-bias": _issue_predicted_nan_bias,
    "depthwise-nan-weight": _issue_depthwise_nan_weight,
}
ISSUE_OPS = {"conv-pads-2^20": "SparseConv", "gru-extreme-inputs": "SparseGRU",
             "lstm-extreme-inputs": "SparseLSTM", "lstm-activations": "SparseLSTM",
             "lstm-clip": "SparseLSTM", "gru-activations": "SparseGRU", "gru-clip": "SparseGRU",
             "predicted-nan-bias": "PredictedConv", "depthwise-nan-weight": "DepthwiseConv"}
ISSUE_CASES = [{"id": f"issue/{k}", "op": ISSUE_OPS[k], "kind": f"issue:{k}", "seed": 0}
               for k in ISSUE_BUILDERS]


def expected_outcome(case: dict) -> Optional[str]:
    if case["kind"].startswith("issue:"):
        return build_case(case)[2].get("expect")
    return None


# ---------------------------------------------------------------------------------------------
# the worker subprocess and the driver

def _worker(path: str) -> int:
    """Run the cases in `path` (a JSON list) in order; a line "start <i>" before each and one
    JSON result line after it, flushed, so the driver knows which case a crash killed."""
    try:
        import resource
        limit = int(os.environ.get("SPARSEKIT_FUZZ_MEMORY", str(8 << 30)))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    cases = json.loads(Path(path).read_text())
    try:   # a missing library would otherwise read as every case "refused"
        sparsekit.get_library_path()
    except Exception as e:
        print(f"worker cannot load the custom-op library: {e}", file=sys.stderr)
        return 2
    for i, case in enumerate(cases):
        print(f"start {i}", flush=True)
        try:
            res = run_case(case)
        except Exception:
            res = {"id": case["id"], "op": case["op"], "kind": case["kind"],
                   "outcome": "harness-error", "detail": traceback.format_exc()[-300:]}
        print("result " + json.dumps(res), flush=True)
    return 0


def run_in_workers(cases: List[dict], *, isa: Optional[str] = None, case_timeout: float = 60.0,
                   progress=None) -> List[dict]:
    """Every case in worker subprocesses (batches in one process; when a worker dies or hangs,
    the case it was running is recorded as "crash" (with the signal) or "hang", and the rest
    go to a fresh worker).  Returns one result per case, in order."""
    env = dict(os.environ)
    if isa:
        env["SPARSEKIT_ISA"] = isa
    env.setdefault("OMP_NUM_THREADS", "1")
    results: List[dict] = []
    todo = list(cases)
    with tempfile.TemporaryDirectory() as tmp:
        while todo:
            path = Path(tmp) / "cases.json"
            path.write_text(json.dumps(todo))
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker",
                                     str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env)
            try:
                stdout, stderr = proc.communicate(timeout=30 + case_timeout * len(todo))
                hung = False
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
                hung = True
            if proc.returncode == 2 and "start 0" not in stdout:
                raise RuntimeError(stderr.strip()[-500:])   # the worker could not start at all
            done, started, phase = [], None, ""
            for line in stdout.splitlines():
                if line.startswith("start "):
                    started, phase = int(line.split()[1]), ""
                elif line.startswith("phase "):
                    phase = line[6:]
                elif line.startswith("result "):
                    done.append(json.loads(line[7:]))
                    started = None
            results.extend(done)
            if progress:
                progress(len(results), len(cases))
            if len(done) == len(todo):
                break
            k = len(done) if started is None else started
            bad = todo[k]
            if hung:
                outcome, detail = "hang", f"no result within {case_timeout:.0f} s per case"
            elif phase == "reference":   # stock onnxruntime died on the dense equivalent
                outcome, detail = "reference-crash", f"exit {proc.returncode}"
            elif proc.returncode < 0:
                outcome, detail = "crash", f"signal {-proc.returncode}"
            else:
                outcome = "crash"
                detail = f"worker exit {proc.returncode}: {stderr.strip()[-300:]}"
            results.append({"id": bad["id"], "op": bad["op"], "kind": bad["kind"],
                            "outcome": outcome, "detail": detail})
            todo = todo[k + 1:]
    return results


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    sys.exit(_worker(sys.argv[2]))
