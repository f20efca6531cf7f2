"""A sparse model is untrusted input: every corrupted packed tensor or attribute must fail session
creation with a message that names the problem (never crash or read out of bounds; run this file
under AddressSanitizer with tests/run_ort_asan.sh).  Run-time shape errors must be clean errors
that leave the session usable."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import sparsekit
from sparsekit.pack import make_depthwise_node, make_sparse_conv_node, make_sparse_gemm_node, unpack
from ort_helpers import conv_weight, make_model, run_stock, sparse_matrix, vinfo, assert_close

FUZZ = settings(max_examples=150, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------
# base models (valid) and editing helpers

CONV = dict(M=10, C=5, k=3, B=4)        # G = 3, two padding rows in the last group, K = 45
BANK = dict(M=8, C=8, k=3, B=4, bank=16)  # K = 72: 4 full banks + a ragged bank of 8
GEMM = dict(M=7, K=40, B=1)
DW = dict(C=4, k=3)


def base_model(kind: str, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    if kind == "conv":
        M, C, k, B = CONV["M"], CONV["C"], CONV["k"], CONV["B"]
        w = conv_weight(rng, M, C, k, k, 0.5, "bsr4")
        node, inits = make_sparse_conv_node("conv", "X", "Y", w, rng.standard_normal(M).astype(np.float32),
                                            block=B, pads=(1, 1, 1, 1), activation="relu")
        x = vinfo("X", ["N", C, "H", "W"])
    elif kind == "bank":
        M, C, k, B = BANK["M"], BANK["C"], BANK["k"], BANK["B"]
        w = conv_weight(rng, M, C, k, k, 0.75, "bank4", BANK["bank"])
        node, inits = make_sparse_conv_node("conv", "X", "Y", w, None, fmt="bank", block=B,
                                            bank_size=BANK["bank"], pads=(1, 1, 1, 1))
        x = vinfo("X", ["N", C, "H", "W"])
    elif kind == "gemm":
        w = sparse_matrix(rng, GEMM["M"], GEMM["K"], 0.5, "bsr1")
        node, inits = make_sparse_gemm_node("fc", "X", "Y", w, rng.standard_normal(GEMM["M"]).astype(np.float32),
                                            block=1)
        x = vinfo("X", ["N", GEMM["K"]])
    elif kind == "dw":
        w = rng.standard_normal((DW["C"], 1, DW["k"], DW["k"])).astype(np.float32)
        node, inits = make_depthwise_node("dw", "X", "Y", w, rng.standard_normal(DW["C"]).astype(np.float32),
                                          pads=(1, 1, 1, 1))
        x = vinfo("X", ["N", DW["C"], "H", "W"])
    else:
        raise ValueError(kind)
    return make_model([node], [x], [vinfo("Y", None)], inits)


def node(m):
    return m.graph.node[0]


def get(m, suffix):
    for t in m.graph.initializer:
        if t.name.endswith(suffix):
            return numpy_helper.to_array(t)
    raise KeyError(suffix)


def put(m, suffix, arr):
    for i, t in enumerate(m.graph.initializer):
        if t.name.endswith(suffix):
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(arr), t.name))
            return
    raise KeyError(suffix)


def set_attr(m, name, value):
    n = node(m)
    for i, a in enumerate(n.attribute):
        if a.name == name:
            del n.attribute[i]
            break
    if value is not None:
        n.attribute.append(helper.make_attribute(name, value))


def attr(m, name):
    for a in node(m).attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def make_graph_input(m, suffix):
    """Turn a weight initializer into a graph input: no longer a constant."""
    for i, t in enumerate(m.graph.initializer):
        if t.name.endswith(suffix):
            m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
            del m.graph.initializer[i]
            return
    raise KeyError(suffix)


def set_input(m, index, name):
    n = node(m)
    while len(n.input) <= index:
        n.input.append("")
    n.input[index] = name


def creation_error(m) -> str:
    try:
        sparsekit.session(m)
    except sparsekit.SparsekitError:
        raise
    except Exception as e:  # onnxruntime's exception types
        return str(e)
    raise AssertionError("session creation succeeded on a corrupted model")


# ---------------------------------------------------------------------------------------------
# targeted corruptions: (base, mutate(model, rng) -> regex the message must match)

def _idx_oob(m, r):
    idx = get(m, ".indices").copy()
    K = CONV["C"] * CONV["k"] ** 2
    idx[r.integers(len(idx))] = r.integers(K, 65536)
    put(m, ".indices", idx)
    return r"indices\[\d+\] = \d+ is out of range \[0, K\) with K = in_channels\*kh\*kw"


def _idx_negative(m, r):
    idx = get(m, ".indices").astype(np.int32)
    idx[r.integers(len(idx))] = -int(r.integers(1, 2**31))
    put(m, ".indices", idx)
    return r"indices\[\d+\] = -\d+ is out of range"


def _gp_value(lo, hi):
    def f(m, r):
        gp = get(m, ".group_ptr").copy()
        gp[r.integers(1, len(gp))] = r.integers(lo, hi)
        put(m, ".group_ptr", gp)
        return r"group_ptr"
    return f


def _gp_first(m, r):
    gp = get(m, ".group_ptr").copy()
    gp[0] = r.integers(1, gp[-1] + 1)
    put(m, ".group_ptr", gp)
    return r"group_ptr\[0\] must be 0"


def _gp_non_monotone(m, r):
    gp = get(m, ".group_ptr").copy()
    gp[1] = gp[2] + 1 + r.integers(5)
    put(m, ".group_ptr", gp)
    return r"group_ptr is not non-decreasing"


def _gp_last(m, r):
    gp = get(m, ".group_ptr").copy()
    gp[-1] = gp[-1] - 1 if r.random() < 0.5 else gp[-1] + 1 + r.integers(100)
    put(m, ".group_ptr", gp)
    return r"group_ptr\[3\] = \d+ must equal the number of blocks"


def _gp_length(m, r):
    gp = get(m, ".group_ptr")
    put(m, ".group_ptr", gp[:-1] if r.random() < 0.5 else np.append(gp, gp[-1]))
    return r"group_ptr has shape \[\d+\], expected \[4\] \(G \+ 1 with G = ceil\(out_channels"


def _idx_length(m, r):
    idx = get(m, ".indices")
    put(m, ".indices", idx[:-1] if r.random() < 0.5 else np.append(idx, idx[:1]))
    return r"indices has shape"


def _values_shape(m, r):
    v = get(m, ".values")
    opts = [v.reshape(-1), v.reshape(-1, 2), v.reshape(-1, 4, 1), v[:-1]]
    put(m, ".values", opts[r.integers(len(opts))])
    return r"values has shape|indices has shape|group_ptr\[3\] = \d+ must equal"


def _cast(suffix, dtype, regex):
    def f(m, r):
        put(m, suffix, get(m, suffix).astype(dtype))
        return regex
    return f


def _attr(name, value, regex):
    def f(m, r):
        set_attr(m, name, value(r) if callable(value) else value)
        return regex
    return f


def _nonconst(suffix, regex):
    def f(m, r):
        make_graph_input(m, suffix)
        return regex
    return f


def _padding_rows(m, r):
    v = get(m, ".values").copy()
    gp = get(m, ".group_ptr")
    j = r.integers(gp[-2], gp[-1])
    v[j, 2 + r.integers(2)] = 1.5  # rows 10, 11 of the last group do not exist (M = 10)
    put(m, ".values", v)
    return r"rows past out_channels \(10\) must be zero"


def _drop_group_ptr(m, r):
    set_input(m, 3, "")
    return r"group_ptr \(input 3\) is required"


def _bias_shape(m, r):
    b = get(m, ".bias")
    put(m, ".bias", b[:-1] if r.random() < 0.5 else np.append(b, 1.0).astype(np.float32))
    return r"bias has shape"


def _bank_offset(m, r):
    idx = get(m, ".indices").copy()
    g, b, q = (r.integers(s) for s in idx.shape)
    length = 8 if b == idx.shape[1] - 1 else 16
    idx[g, b, q] = r.integers(length, 256)
    put(m, ".indices", idx)
    return rf"indices\[{g}, {b}, {q}\] = \d+ is not below the length of bank {b} \({length}\)"


def _bank_keep(m, r):
    v = get(m, ".values")
    G, nb, keep, B = v.shape
    put(m, ".values", np.zeros((G, nb, 17, B), np.float32))
    put(m, ".indices", np.zeros((G, nb, 17), np.uint8))
    return r"keep = 17 blocks per bank exceeds bank_size = 16"


def _bank_gp(m, r):
    m.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.int32), "gp"))
    set_input(m, 3, "gp")
    return r"group_ptr must be absent"


def _bank_idx_shape(m, r):
    idx = get(m, ".indices")
    put(m, ".indices", idx[:, :, :-1])
    return r"indices has shape"


def _dw_weight(shape, regex):
    def f(m, r):
        put(m, ".W", np.ones(shape, np.float32))
        return regex
    return f


PADS_EXTENT = r"'pads' .* must be smaller than the dilated kernel extent"


def _non_finite(suffix, bad):
    def f(m, r):
        a = get(m, suffix).copy()
        a.reshape(-1)[int(r.integers(a.size))] = bad
        put(m, suffix, a)
        return suffix.lstrip(".") + r" has a non-finite value .*require finite weights and biases"
    return f


def _unimplemented(name):
    return f"attribute '{name}' is not implemented by this op"


MUTATIONS = {
    # SparseConv, format bsr
    "conv/index-out-of-range": ("conv", _idx_oob),
    "conv/index-negative": ("conv", _idx_negative),
    "conv/group_ptr-huge": ("conv", _gp_value(100, 2**31 - 1)),
    "conv/group_ptr-negative": ("conv", _gp_value(-2**31, 0)),
    "conv/group_ptr-first": ("conv", _gp_first),
    "conv/group_ptr-non-monotone": ("conv", _gp_non_monotone),
    "conv/group_ptr-last": ("conv", _gp_last),
    "conv/group_ptr-length": ("conv", _gp_length),
    "conv/indices-length": ("conv", _idx_length),
    "conv/values-shape": ("conv", _values_shape),
    "conv/values-float64": ("conv", _cast(".values", np.float64, r"conv\.values")),
    "conv/indices-int64": ("conv", _cast(".indices", np.int64,
                                         r"indices must be int32 or uint16 .*got int64")),
    "conv/indices-uint8": ("conv", _cast(".indices", np.uint8,
                                         r"indices must be int32 or uint16 .*got uint8")),
    "conv/indices-float": ("conv", _cast(".indices", np.float32, r"indices must be int32")),
    "conv/group_ptr-int64": ("conv", _cast(".group_ptr", np.int64, r"conv\.group_ptr")),
    "conv/bias-float64": ("conv", _cast(".bias", np.float64, r"conv\.bias")),
    "conv/bias-shape": ("conv", _bias_shape),
    "conv/padding-rows": ("conv", _padding_rows),
    "conv/no-group_ptr": ("conv", _drop_group_ptr),
    "conv/kernel_shape-vs-K": ("conv", lambda m, r: (set_attr(m, "pads", None), _attr(
        "kernel_shape", [1, 1], r"out of range \[0, K\) with K = in_channels\*kh\*kw = 5\*1\*1")(m, r))[-1]),
    "conv/kernel_shape-len": ("conv", _attr("kernel_shape", [3], r"'kernel_shape' must have 2 values")),
    "conv/kernel_shape-zero": ("conv", _attr("kernel_shape", [0, 3], r"'kernel_shape' values")),
    "conv/kernel_shape-missing": ("conv", _attr("kernel_shape", None,
                                                r"missing required attribute 'kernel_shape'")),
    "conv/in_channels-small": ("conv", _attr("in_channels", 1, r"K = in_channels\*kh\*kw = 1\*3\*3")),
    "conv/in_channels-zero": ("conv", _attr("in_channels", 0, r"'in_channels' must be >= 1")),
    "conv/out_channels-more": ("conv", _attr("out_channels", lambda r: int(r.integers(13, 10**6)),
                                             r"ceil\(out_channels / block\)")),
    "conv/out_channels-fewer": ("conv", _attr("out_channels", lambda r: int(r.integers(1, 9)),
                                              r"out_channels")),
    "conv/out_channels-negative": ("conv", _attr("out_channels", -4, r"'out_channels' must be >= 1")),
    "conv/out_channels-float": ("conv", _attr("out_channels", 10.0, r"'out_channels' must be an int")),
    "conv/stride-zero": ("conv", _attr("strides", lambda r: [0, 1] if r.random() < .5 else [1, 0],
                                       r"'strides' values must be in \[1,")),
    "conv/stride-huge": ("conv", _attr("strides", [1 << 40, 1], r"'strides' values must be in")),
    "conv/pads-negative": ("conv", _attr("pads", lambda r: [int(v) for v in r.permutation([-1, 0, 1, 1])],
                                         r"'pads' values must be in \[0,")),
    "conv/pads-length": ("conv", _attr("pads", [1, 1], r"'pads' must have 4 values")),
    "conv/dilations-zero": ("conv", _attr("dilations", [0, 1], r"'dilations' values must be in \[1,")),
    "conv/values-nonconstant": ("conv", _nonconst(".values", r"'values' \(input 1\) must be a constant")),
    "conv/indices-nonconstant": ("conv", _nonconst(".indices", r"'indices' \(input 2\) must be a constant")),
    "conv/group_ptr-nonconstant": ("conv", _nonconst(".group_ptr",
                                                     r"'group_ptr' \(input 3\) must be a constant")),
    "conv/bias-nonconstant": ("conv", _nonconst(".bias", r"'bias' \(input 4\) must be a constant")),
    "conv/format-missing": ("conv", _attr("format", None, r"missing required attribute 'format'")),
    "conv/format-int": ("conv", _attr("format", 1, r"attribute 'format' must be a string")),
    "conv/format-unknown": ("conv", _attr("format", "csr", r"'format' must be \"bsr\" or \"bank\"")),
    "conv/block-3": ("conv", _attr("block", 3, r"'block' must be 1 or 4, got 3")),
    "conv/block-mismatch": ("conv", _attr("block", 1, r"values has shape \[\d+, 4\], expected \[nblocks, 1\]")),
    "conv/block-missing": ("conv", _attr("block", None, r"missing required attribute 'block'")),
    "conv/activation-unknown": ("conv", _attr("activation", "gelu", r"'activation' must be")),
    "conv/clip-with-relu": ("conv", _attr("clip_max", 6.0, r"clip_min/clip_max are only valid")),
    "conv/residual_after_act-no-residual": ("conv", _attr("residual_after_act", 1,
                                                          r"residual_after_act = 1 needs a residual")),
    "conv/residual_after_act-2": ("conv", _attr("residual_after_act", 2,
                                                r"'residual_after_act' must be 0 or 1")),
    "conv/bank_size-on-bsr": ("conv", _attr("bank_size", 16, r"'bank_size' is only valid")),
    # SparseConv, format bank
    "bank/offset-out-of-bank": ("bank", _bank_offset),
    "bank/keep-exceeds-bank": ("bank", _bank_keep),
    "bank/group_ptr-present": ("bank", _bank_gp),
    "bank/indices-shape": ("bank", _bank_idx_shape),
    "bank/indices-int32": ("bank", _cast(".indices", np.int32, r"indices must be uint8 or uint16")),
    "bank/bank_size-zero": ("bank", _attr("bank_size", 0, r"'bank_size' must be in \[1, 65536\]")),
    "bank/bank_size-missing": ("bank", _attr("bank_size", None, r"missing required attribute 'bank_size'")),
    "bank/bank_size-other": ("bank", _attr("bank_size", 8, r"values has shape .*nbanks = ceil")),
    "bank/kernel_shape-vs-K": ("bank", lambda m, r: (set_attr(m, "pads", None), _attr(
        "kernel_shape", [1, 1], r"values has shape .*nbanks")(m, r))[-1]),
    "bank/out_channels": ("bank", _attr("out_channels", 16, r"ceil\(out_channels / block\)")),
    # SparseGemm
    "gemm/in_features": ("gemm", _attr("in_features", 20, r"K = in_features = 20")),
    "gemm/out_features-missing": ("gemm", _attr("out_features", None,
                                                r"missing required attribute 'out_features'")),
    "gemm/clip-inverted": ("gemm", lambda m, r: (set_attr(m, "activation", "clip"),
                                                 set_attr(m, "clip_min", 1.0),
                                                 set_attr(m, "clip_max", 0.0),
                                                 r"clip_min \(1\.0+\) is greater than clip_max")[-1]),
    "gemm/values-nonconstant": ("gemm", _nonconst(".values", r"must be a constant initializer")),
    # DepthwiseConv
    "dw/dilation-2": ("dw", _attr("dilations", [2, 2], r"'dilations' must be \[1, 1\]")),
    "dw/non-square": ("dw", _dw_weight((4, 1, 3, 5), r"only square kernels")),
    "dw/W-shape": ("dw", _dw_weight((4, 2, 3, 3), r"W has shape \[4, 2, 3, 3\], expected \[C, 1, k, k\]")),
    "dw/kernel_shape": ("dw", _attr("kernel_shape", [5, 5], r"'kernel_shape' \[5, 5\] does not match")),
    "dw/strides-unequal": ("dw", _attr("strides", [1, 2], r"'strides' must be equal")),
    "dw/stride-zero": ("dw", _attr("strides", [0, 0], r"'strides' values must be in \[1,")),
    "dw/pads-negative": ("dw", _attr("pads", [0, -2, 0, 0], r"'pads' values")),
    "dw/W-nonconstant": ("dw", _nonconst(".W", r"'W' \(input 1\) must be a constant")),
    "dw/bias-shape": ("dw", lambda m, r: (put(m, ".bias", np.ones(5, np.float32)), r"bias has shape \[5\]")[-1]),
    # issue 21: attributes bounded by what they mean (a pad smaller than the dilated kernel,
    # strides and dilations up to 4096), ...
    "conv/pads-2^20": ("conv", _attr("pads", [2**20, 0, 0, 0], PADS_EXTENT)),
    "conv/pads-extent": ("conv", _attr("pads", lambda r: [int(v) for v in r.permutation([3, 0, 0, 0])],
                                       PADS_EXTENT)),
    "conv/stride-4097": ("conv", _attr("strides", [1, 4097], r"must be in \[1, 4096\]")),
    "conv/dilation-4097": ("conv", _attr("dilations", [4097, 1], r"must be in \[1, 4096\]")),
    "bank/pads-extent": ("bank", _attr("pads", [0, 0, 0, 3], PADS_EXTENT)),
    "dw/pads-2^20": ("dw", _attr("pads", [0, 2**20, 0, 0], PADS_EXTENT)),
    "dw/pads-extent": ("dw", _attr("pads", [1, 1, 3, 1], PADS_EXTENT)),
    # ... finite weights and biases everywhere ...
    "conv/values-nan": ("conv", _non_finite(".values", np.nan)),
    "conv/values-inf": ("conv", _non_finite(".values", np.inf)),
    "conv/bias-nan": ("conv", _non_finite(".bias", np.nan)),
    "conv/bias-inf": ("conv", _non_finite(".bias", -np.inf)),
    "bank/values-inf": ("bank", _non_finite(".values", -np.inf)),
    "gemm/values-nan": ("gemm", _non_finite(".values", np.nan)),
    "gemm/bias-inf": ("gemm", _non_finite(".bias", np.inf)),
    "dw/W-nan": ("dw", _non_finite(".W", np.nan)),
    "dw/W-inf": ("dw", _non_finite(".W", np.inf)),
    "dw/bias-nan": ("dw", _non_finite(".bias", np.nan)),
    # ... and no attribute silently ignored
    "conv/group": ("conv", _attr("group", 2, _unimplemented("group"))),
    "conv/auto_pad": ("conv", _attr("auto_pad", "SAME_UPPER", _unimplemented("auto_pad"))),
    "conv/hidden_size": ("conv", _attr("hidden_size", 4, _unimplemented("hidden_size"))),
    "conv/output_padding": ("conv", _attr("output_padding", [1, 1], _unimplemented("output_padding"))),
    "bank/margin": ("bank", _attr("margin", 3, _unimplemented("margin"))),
    "gemm/transA": ("gemm", _attr("transA", 1, _unimplemented("transA"))),
    "gemm/alpha": ("gemm", _attr("alpha", 2.0, _unimplemented("alpha"))),
    "gemm/kernel_shape": ("gemm", _attr("kernel_shape", [1, 1], _unimplemented("kernel_shape"))),
    "dw/residual_after_act": ("dw", _attr("residual_after_act", 1, _unimplemented("residual_after_act"))),
    "dw/group": ("dw", _attr("group", 1, r"'group' = 1 must equal the channel count 4")),
    "dw/activations": ("dw", _attr("activations", ["Relu"], _unimplemented("activations"))),
}


def _check(name, seed):
    kind, mutate = MUTATIONS[name]
    m = base_model(kind, seed % 7)
    regex = mutate(m, np.random.default_rng(seed))
    msg = creation_error(m)
    assert __import__("re").search(regex, msg), f"{name}: {regex!r} not in {msg!r}"
    op = {"conv": "SparseConv", "bank": "SparseConv", "gemm": "SparseGemm", "dw": "DepthwiseConv"}[kind]
    if "Type Error" not in msg:  # our own messages name the op and the node
        assert f"{op} node '{node(m).name}'" in msg, msg


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_each_corruption_fails_creation_clearly(name):
    _check(name, 0)


@FUZZ
@given(name=st.sampled_from(list(MUTATIONS)), seed=st.integers(0, 2**32 - 1))
def test_corruptions_fuzzed(name, seed):
    _check(name, seed)


def test_base_models_are_valid():
    for kind in ("conv", "bank", "gemm", "dw"):
        sparsekit.session(base_model(kind))


# ---------------------------------------------------------------------------------------------
# random overwrites: creation fails iff an independent Python check says the tensors are invalid,
# and a model that is accepted computes what its (corrupted) tensors say

def _valid(kind, values, indices, gp):
    if kind == "conv":
        M, B, K = CONV["M"], CONV["B"], CONV["C"] * CONV["k"] ** 2
        G = -(-M // B)
        nb = len(values)
        if len(gp) != G + 1 or gp[0] != 0 or gp[-1] != nb or (np.diff(gp.astype(np.int64)) < 0).any():
            return False
        if ((indices.astype(np.int64) < 0) | (indices >= K)).any():
            return False
        return not values[gp[-2]:, M - (G - 1) * B:].any()
    M, B, bank = BANK["M"], BANK["B"], BANK["bank"]
    K = BANK["C"] * BANK["k"] ** 2
    lens = np.array([min(bank, K - b * bank) for b in range(indices.shape[1])])
    return bool((indices < lens[None, :, None]).all())  # M = 8: no padding rows


@FUZZ
@given(kind=st.sampled_from(["conv", "bank"]), tensor=st.sampled_from(["values", "indices", "group_ptr"]),
       seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3))
def test_random_overwrites(kind, tensor, seed, n):
    if kind == "bank" and tensor == "group_ptr":
        tensor = "indices"
    r = np.random.default_rng(seed)
    m = base_model(kind, seed % 5)
    arr = get(m, "." + tensor).copy()
    flat = arr.reshape(-1)
    for _ in range(n):
        i = r.integers(flat.size)
        if arr.dtype == np.float32:
            flat[i] = r.choice([0.0, 1.0, -3.5, np.float32(r.standard_normal())])
        else:
            info = np.iinfo(arr.dtype)
            # mostly near the valid range, sometimes anywhere in the dtype
            v = r.integers(-3, 80) if r.random() < 0.7 else r.integers(info.min, int(info.max) + 1)
            flat[i] = np.clip(v, info.min, info.max)
    put(m, "." + tensor, arr)
    values, indices = get(m, ".values"), get(m, ".indices")
    gp = get(m, ".group_ptr") if kind == "conv" else None
    ok = _valid(kind, values, indices, gp)
    try:
        s = sparsekit.session(m)
    except sparsekit.SparsekitError:
        raise
    except Exception as e:
        assert not ok, f"valid tensors rejected: {e}"
        assert any(w in str(e) for w in ("indices", "group_ptr", "values")), str(e)
        return
    # accepted: run it first (under ASan an out-of-bounds read shows here), then it must have
    # been valid and compute what a dense conv with the weights the tensors stand for computes
    C, k = (CONV if kind == "conv" else BANK)["C"], 3
    x = r.standard_normal((1, C, 6, 5)).astype(np.float32)
    y = s.run(None, {"X": x})[0]
    assert ok, "invalid tensors accepted"
    M = (CONV if kind == "conv" else BANK)["M"]
    W2d = unpack({"values": values, "indices": indices, "group_ptr": gp}, M, C * k * k,
                 "bsr" if kind == "conv" else "bank", 4, BANK["bank"])
    conv = helper.make_node("Conv", ["X", "W"] + (["B"] if kind == "conv" else []), ["C0"],
                            pads=[1, 1, 1, 1])
    inits = [numpy_helper.from_array(W2d.reshape(M, C, k, k), "W")]
    nodes = [conv]
    if kind == "conv":
        inits.append(numpy_helper.from_array(get(m, ".bias"), "B"))
        nodes.append(helper.make_node("Relu", ["C0"], ["Y"]))
    else:
        nodes.append(helper.make_node("Identity", ["C0"], ["Y"]))
    dense = make_model(nodes, [vinfo("X", ["N", C, "H", "W"])], [vinfo("Y", None)], inits, sparse=False)
    assert_close(y, run_stock(dense, {"X": x}), C * k * k)


# ---------------------------------------------------------------------------------------------
# run-time errors

def _session_untyped(kind, residual=False):
    """Base model with X declared without a shape, so onnxruntime lets any shape through."""
    m = base_model(kind)
    m.graph.input[0].CopyFrom(vinfo("X", None))
    if residual:
        set_input(m, 5, "R")
        m.graph.input.append(vinfo("R", None))
    return sparsekit.session(m)


RUNTIME = {
    "conv/wrong-C": ("conv", False, {"X": (1, 4, 6, 6)}, r"X has shape \[1, 4, 6, 6\] but in_channels = 5"),
    "conv/rank3": ("conv", False, {"X": (5, 6, 6)}, r"X must be 4-D"),
    "conv/too-small": ("conv", False, {"X": (1, 5, 0, 6)}, r"smaller than the dilated kernel"),
    "conv/residual-shape": ("conv", True, {"X": (1, 5, 6, 6), "R": (1, 10, 6, 5)},
                            r"residual has shape \[1, 10, 6, 5\], expected Y's shape \[1, 10, 6, 6\]"),
    "gemm/wrong-K": ("gemm", False, {"X": (3, 39)}, r"X has shape \[3, 39\], expected \[\.\.\., 40\]"),
    "gemm/scalar": ("gemm", False, {"X": ()}, r"X has shape \[\]"),
    "gemm/residual-shape": ("gemm", True, {"X": (2, 40), "R": (2, 8)}, r"residual has shape \[2, 8\]"),
    "dw/wrong-C": ("dw", False, {"X": (1, 3, 5, 5)}, r"but W has 4 channels"),
}


@pytest.mark.parametrize("name", list(RUNTIME))
def test_runtime_errors_are_clean(name):
    kind, residual, shapes, regex = RUNTIME[name]
    s = _session_untyped(kind, residual)
    feeds = {k: np.ones(v, np.float32) for k, v in shapes.items()}
    with pytest.raises(Exception, match=regex) as ei:
        s.run(None, feeds)
    assert not isinstance(ei.value, sparsekit.SparsekitError)
    # the session still works afterwards
    good = {"conv": (1, 5, 6, 6), "gemm": (3, 40), "dw": (1, 4, 5, 5)}[kind]
    feeds = {"X": np.ones(good, np.float32)}
    if residual:
        feeds["R"] = np.ones({"conv": (1, 10, 6, 6), "gemm": (3, 7)}[kind], np.float32)
    assert np.isfinite(s.run(None, feeds)[0]).all()
