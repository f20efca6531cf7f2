"""Kernel tests through sparsekit._native: every ISA this CPU/build has, against numpy.

The references here are independent of the C++ reference kernels: SpMM is a dense float64
matmul of the densified weights, depthwise conv an explicit zero-padded numpy computation.
The native driver (tests/native/test_kernels.cpp) covers work splitting, guard values and
ASan; these cover random shapes and epilogues through the Python-facing API.
"""
from __future__ import annotations

import platform

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsekit import _native

AVAILABLE = set(_native.available_isas())
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
IS_ARM64 = platform.machine().lower() in ("aarch64", "arm64")


def _skip_reason(isa: str) -> str:
    if isa == "avx512":
        return "CPU lacks AVX-512" if IS_X86 else "AVX-512 kernels are x86-only"
    if isa == "avx2":
        return "CPU lacks AVX2+FMA" if IS_X86 else "AVX2 kernels are x86-only"
    if isa == "neon":
        return "NEON kernels are built on aarch64 only"
    return f"{isa} unavailable"


ISAS = [
    pytest.param(isa, marks=pytest.mark.skipif(isa not in AVAILABLE, reason=_skip_reason(isa)))
    for isa in ("ref", "avx2", "avx512", "neon")
]

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------- spmm --
def random_blocks(rng, rows, K, B, sparsity, empty_every=0):
    """1xB blocks kept with probability 1 - sparsity; returns (group_ptr, k_index, values,
    dense [rows, K])."""
    groups = -(-rows // B)
    keep = rng.random((groups, K)) >= sparsity
    if empty_every:
        keep[empty_every - 1::empty_every] = False
    group_ptr = np.zeros(groups + 1, np.int32)
    group_ptr[1:] = np.cumsum(keep.sum(axis=1))
    g_idx, k_index = np.nonzero(keep)
    values = rng.standard_normal((len(k_index), B)).astype(np.float32)
    rows_of = g_idx[:, None] * B + np.arange(B)[None, :]
    values[rows_of >= rows] = 0.0  # rows past `rows` in the last group hold zeros
    dense = np.zeros((groups * B, K), np.float64)
    dense[rows_of.ravel(), np.repeat(k_index, B)] = values.ravel()
    return group_ptr, k_index.astype(np.int32), values.ravel(), dense[:rows]


def spmm_reference(dense, x, bias, residual, after, lo, hi):
    """float64 result and the scale sum(|terms|) each output's rounding error is bounded by."""
    xd = x.astype(np.float64)
    acc = dense @ xd
    scale = np.abs(dense) @ np.abs(xd)
    if bias is not None:
        acc = acc + bias[:, None]
        scale = scale + np.abs(bias)[:, None]
    res = residual.astype(np.float64) if residual is not None else 0.0
    if residual is not None and not after:
        acc = acc + res
    acc = np.minimum(np.maximum(acc, lo), hi)
    if residual is not None and after:
        acc = acc + res
    if residual is not None:
        scale = scale + np.abs(res)
    return acc, scale + np.abs(acc)


EPILOGUES = [  # bias, residual, residual_after_act, lo, hi
    (False, False, False, -np.inf, np.inf),
    (True, False, False, -np.inf, np.inf),
    (True, False, False, 0.0, np.inf),
    (True, False, False, 0.0, 6.0),
    (False, False, False, -0.25, 0.5),
    (True, True, False, 0.0, np.inf),
    (False, True, False, -np.inf, np.inf),
    (True, True, True, 0.0, np.inf),
    (False, True, True, -0.5, 0.5),
]


def check_spmm(isa, B, rows, K, n, sparsity, epi, seed, empty_every=0):
    rng = np.random.default_rng(seed)
    group_ptr, k_index, values, dense = random_blocks(rng, rows, K, B, sparsity, empty_every)
    x = rng.standard_normal((K, n)).astype(np.float32)
    use_bias, use_res, after, lo, hi = epi
    bias = rng.standard_normal(rows).astype(np.float32) if use_bias else None
    residual = rng.standard_normal((rows, n)).astype(np.float32) if use_res else None
    y = _native.spmm(isa, B, rows, group_ptr, k_index, values, x, bias=bias,
                     residual=residual, residual_after_act=after, lo=lo, hi=hi)
    assert y.shape == (rows, n) and y.dtype == np.float32
    want, scale = spmm_reference(dense, x, bias, residual, after, lo, hi)
    err = np.abs(y - want)
    bad = err > 1e-5 * scale + 1e-30
    assert not bad.any(), (
        f"{isa} B={B} rows={rows} K={K} n={n} s={sparsity:.2f} epi={epi}: "
        f"{bad.sum()} outputs off, worst {err.max():.3g} "
        f"at {np.unravel_index(err.argmax(), err.shape)}")


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(B=st.sampled_from([1, 4]), rows=st.integers(1, 37), K=st.integers(1, 96),
       n=st.integers(1, 130), sparsity=st.floats(0.0, 0.99),
       epi=st.sampled_from(EPILOGUES), seed=st.integers(0, 2**32 - 1))
def test_spmm_random(isa, B, rows, K, n, sparsity, epi, seed):
    check_spmm(isa, B, rows, K, n, sparsity, epi, seed)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("B", [1, 4])
def test_spmm_every_remainder(isa, B):
    """Every pixel count 1..100: all remainders of the 8/16/24/32/48/64-pixel tiles."""
    for n in range(1, 101):
        check_spmm(isa, B, rows=4 * (n % 3) + 1 + n % 4, K=n % 29 + 3, n=n,
                   sparsity=(0.0, 0.5, 0.9, 0.99)[n % 4], epi=EPILOGUES[n % len(EPILOGUES)],
                   seed=n)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("B", [1, 4])
def test_spmm_empty_groups_and_extremes(isa, B):
    check_spmm(isa, B, 19, 40, 37, 0.5, EPILOGUES[5], 1, empty_every=3)  # some groups empty
    check_spmm(isa, B, 9, 40, 50, 1.0, EPILOGUES[7], 2)                  # no blocks at all
    check_spmm(isa, B, 6, 64, 29, 0.0, EPILOGUES[3], 3)                  # dense
    check_spmm(isa, B, 12, 1024, 49, 0.9, EPILOGUES[2], 4)               # wide reduction
    check_spmm(isa, B, 8, 70, 1000, 0.9, EPILOGUES[1], 5)                # several pixel chunks


# ----------------------------------------------------------------------------- dwconv --
def dwconv_reference(x, w, stride, pt, pl, OH, OW, bias, lo, hi):
    H, W = x.shape
    k = w.shape[0]
    need_h = (OH - 1) * stride + k
    need_w = (OW - 1) * stride + k
    xp = np.zeros((max(need_h, pt + H), max(need_w, pl + W)), np.float64)
    xp[pt:pt + H, pl:pl + W] = x
    acc = np.full((OH, OW), float(bias))
    scale = np.full((OH, OW), abs(float(bias)))
    for ky in range(k):
        for kx in range(k):
            win = xp[ky:ky + stride * (OH - 1) + 1:stride, kx:kx + stride * (OW - 1) + 1:stride]
            acc += float(w[ky, kx]) * win
            scale += abs(float(w[ky, kx])) * np.abs(win)
    out = np.minimum(np.maximum(acc, lo), hi)
    return out, scale + np.abs(out)


def check_dwconv(isa, H, W, k, stride, pt, pl, pb, pr, bias, lo, hi, seed):
    OH = (H + pt + pb - k) // stride + 1
    OW = (W + pl + pr - k) // stride + 1
    if H + pt + pb < k or W + pl + pr < k:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((H, W)).astype(np.float32)
    w = rng.standard_normal((k, k)).astype(np.float32)
    y = _native.dwconv(isa, x, w, stride, pt, pl, OH, OW, bias=bias, lo=lo, hi=hi)
    assert y.shape == (OH, OW)
    want, scale = dwconv_reference(x, w, stride, pt, pl, OH, OW, np.float32(bias), lo, hi)
    err = np.abs(y - want)
    bad = err > 1e-5 * scale + 1e-30
    assert not bad.any(), (
        f"{isa} {H}x{W} k={k} s={stride} pads={pt},{pl},{pb},{pr}: {bad.sum()} off, "
        f"worst {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}")


CLAMPS = [(-np.inf, np.inf), (0.0, np.inf), (0.0, 6.0), (-0.3, 0.2)]


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(H=st.integers(1, 24), W=st.integers(1, 40), k=st.sampled_from([1, 2, 3, 4, 5, 7]),
       stride=st.integers(1, 3), pads=st.tuples(*[st.integers(0, 2)] * 4),
       bias=st.floats(-1, 1, width=32), clamp=st.sampled_from(CLAMPS),
       seed=st.integers(0, 2**32 - 1))
def test_dwconv_random(isa, H, W, k, stride, pads, bias, clamp, seed):
    check_dwconv(isa, H, W, k, stride, *pads, bias, *clamp, seed)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_dwconv_mobilenet_planes(isa, k, stride):
    p = k // 2
    for size in (112, 56, 28, 14, 7, 1, 2, 3):
        check_dwconv(isa, size, size, k, stride, p, p, p, p, 0.1, 0.0, 6.0, size)
    check_dwconv(isa, 112, 112, k, stride, 0, 0, p, p, -0.2, 0.0, np.inf, 7)  # TF "same" s2
    check_dwconv(isa, 2, 3, k, stride, 2, 2, 2, 2, 0.3, -np.inf, np.inf, 8)
    check_dwconv(isa, 3, 5000, k, stride, p, p, p, p, 0.0, -np.inf, np.inf, 9)  # wide rows
    # rows that fit the kernels' stack buffer only a few at a time: the row ring wraps
    check_dwconv(isa, 37, 1531, k, stride, p, p, p, p, 0.5, 0.0, 6.0, 10)
    check_dwconv(isa, 20, 3002, k, stride, 1, 0, 2, 1, 0.0, -np.inf, np.inf, 11)


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(C=st.integers(1, 40), H=st.integers(1, 30), W=st.integers(1, 34),
       k=st.sampled_from([1, 3, 5, 7]), stride=st.integers(1, 3),
       pads=st.tuples(*[st.integers(0, 2)] * 4), clamp=st.sampled_from(CLAMPS),
       seed=st.integers(0, 2**32 - 1))
def test_dwconv_multi_random(isa, C, H, W, k, stride, pads, clamp, seed):
    """dwconv_multi (several planes per call; AVX-512 vectorises over 16 channels) against the
    per-plane reference, channel by channel, including ragged channel groups."""
    pt, pl, pb, pr = pads
    if H + pt + pb < k or W + pl + pr < k:
        return
    OH = (H + pt + pb - k) // stride + 1
    OW = (W + pl + pr - k) // stride + 1
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((C, H, W)).astype(np.float32)
    w = rng.standard_normal((C, k, k)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    y = _native.dwconv_multi(isa, x, w, b, stride, pt, pl, OH, OW, lo=clamp[0], hi=clamp[1])
    assert y.shape == (C, OH, OW)
    for c in range(C):
        want, scale = dwconv_reference(x[c], w[c], stride, pt, pl, OH, OW, b[c], *clamp)
        err = np.abs(y[c] - want)
        assert not (err > 1e-5 * scale + 1e-30).any(), (isa, c, H, W, k, stride, pads)


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(C=st.integers(1, 40), H=st.integers(1, 30), W=st.integers(1, 34),
       k=st.sampled_from([1, 2, 3, 5, 7]), stride=st.integers(1, 3),
       pads=st.tuples(*[st.integers(0, 2)] * 4), clamp=st.sampled_from(CLAMPS),
       parts=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_dwconv_blocked_random(isa, C, H, W, k, stride, pads, clamp, parts, seed):
    """dwconv_blocked (8-channel blocks, NCHWc) against the per-plane reference: channel
    counts not multiples of 8, odd planes, strides, pads, output rows in `parts` ranges."""
    pt, pl, pb, pr = pads
    if H + pt + pb < k or W + pl + pr < k:
        return
    OH = (H + pt + pb - k) // stride + 1
    OW = (W + pl + pr - k) // stride + 1
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((C, H, W)).astype(np.float32)
    w = rng.standard_normal((C, k, k)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    y = _native.dwconv_blocked(isa, x, w, b, stride, pt, pl, OH, OW, lo=clamp[0], hi=clamp[1],
                               parts=parts)
    assert y.shape == (C, OH, OW)
    for c in range(C):
        want, scale = dwconv_reference(x[c], w[c], stride, pt, pl, OH, OW, b[c], *clamp)
        err = np.abs(y[c] - want)
        assert not (err > 1e-5 * scale + 1e-30).any(), (isa, c, H, W, k, stride, pads)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_dwconv_blocked_model_planes(isa, k, stride):
    """The zoo models' depthwise planes (MobileNet, EfficientNet-Lite0), both padding
    conventions for stride 2, a few channels more than a multiple of 8."""
    p = k // 2
    rng = np.random.default_rng(k * 10 + stride)
    for size, C in ((112, 9), (56, 17), (28, 10), (14, 12), (7, 20)):
        for pads in ((p, p, p, p), (p - 1, p - 1, p, p)):
            x = rng.standard_normal((C, size, size)).astype(np.float32)
            w = rng.standard_normal((C, k, k)).astype(np.float32)
            b = rng.standard_normal(C).astype(np.float32)
            OH = (size + pads[0] + pads[2] - k) // stride + 1
            OW = (size + pads[1] + pads[3] - k) // stride + 1
            y = _native.dwconv_blocked(isa, x, w, b, stride, pads[0], pads[1], OH, OW,
                                       lo=0.0, hi=6.0, parts=2)
            for c in range(C):
                want, scale = dwconv_reference(x[c], w[c], stride, pads[0], pads[1], OH, OW,
                                               b[c], 0.0, 6.0)
                assert not (np.abs(y[c] - want) > 1e-5 * scale + 1e-30).any(), (size, C, c)


# ----------------------------------------------------------------------- errors, dispatch --
def test_available_isas():
    isas = _native.available_isas()
    assert isas[0] == "ref"
    assert set(isas) <= {"ref", "avx2", "avx512", "neon"}
    if IS_ARM64:
        assert "neon" in isas


def test_unknown_or_unavailable_isa_is_valueerror():
    x = np.zeros((2, 3), np.float32)
    args = (1, 1, np.array([0, 1], np.int32), np.array([0], np.int32),
            np.ones(1, np.float32), x)
    with pytest.raises(ValueError, match="unknown ISA"):
        _native.spmm("sse9", *args)
    with pytest.raises(ValueError, match="unknown ISA"):
        _native.dwconv("bogus", x, np.ones((3, 3), np.float32), 1, 1, 1, 2, 3)
    missing = [i for i in ("avx2", "avx512", "neon") if i not in AVAILABLE]
    for isa in missing:
        with pytest.raises(ValueError, match="not available"):
            _native.spmm(isa, *args)


@pytest.mark.parametrize("bad, match", [
    (dict(group_ptr=[0, 2]), "group_ptr must start at 0 and end"),
    (dict(group_ptr=[0, 1, 1]), "group_ptr must have"),
    (dict(k_index=[5]), "k_index out of range"),
    (dict(k_index=[-1]), "k_index out of range"),
    (dict(values=[1.0, 2.0]), "values must hold"),
    (dict(B=3), "B must be 1 or 4"),
])
def test_spmm_rejects_bad_input(bad, match):
    kw = dict(B=1, rows=1, group_ptr=[0, 1], k_index=[0], values=[1.0])
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        _native.spmm("ref", kw["B"], kw["rows"], np.array(kw["group_ptr"], np.int32),
                     np.array(kw["k_index"], np.int32), np.array(kw["values"], np.float32),
                     np.zeros((4, 3), np.float32))


def test_dwconv_rejects_bad_input():
    x = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="square"):
        _native.dwconv("ref", x, np.ones((3, 2), np.float32), 1, 0, 0, 2, 2)
    with pytest.raises(ValueError, match="stride"):
        _native.dwconv("ref", x, np.ones((3, 3), np.float32), 0, 0, 0, 2, 2)
    with pytest.raises(ValueError, match="pads"):
        _native.dwconv("ref", x, np.ones((3, 3), np.float32), 1, -1, 0, 2, 2)


def test_time_spmm_blocked_runs_and_rejects_bad_strides():
    """The benchmark binding (bench_panel_stride.py): a positive time for every stride the op
    uses, a ValueError for a stride the kernels cannot take."""
    gp = np.array([0, 1, 2], np.int32)
    ki = np.array([0, 9], np.int32)
    vals = np.ones(8, np.float32)
    x = np.ones((10, 50), np.float32)
    for isa in AVAILABLE:
        for ps in (32, 48, 80):
            assert _native.time_spmm_blocked(isa, 7, gp, ki, vals, x, ps, repeats=2) > 0
    for ps in (0, 12, 8192):
        with pytest.raises(ValueError, match="panel_stride"):
            _native.time_spmm_blocked("ref", 7, gp, ki, vals, x, ps)


@pytest.mark.parametrize("P, K, M", [(3136, 144, 24), (12544, 32, 16), (3136, 24, 144),
                                     (196, 384, 64), (49, 1024, 1024), (1, 3, 5)])
def test_blocked_panel_rule(P, K, M):
    """The op's panel choice (ort/work_split.h): an item that fits the ~64 KiB one-chunk panel
    (an odd multiple of 16 pixels, 64..976) runs through it, so do expansions; a wider item
    in 48-pixel chunks, 32 from 144 input channels on.  The item is at most the image."""
    k8 = -(-K // 8) * 8
    want_whole = (max(64, min(960, 16384 // k8)) // 16 | 1) * 16
    for isa in AVAILABLE:
        item, stride, whole = _native.blocked_panel(isa, P, K, M)
        assert whole == want_whole and 1 <= item <= P
        if item <= whole or M >= 4 * k8:
            assert stride == whole
        else:
            assert stride == (32 if k8 >= 144 else 48)
    with pytest.raises(ValueError, match="must be >= 1"):
        _native.blocked_panel("ref", 0, K, M)


def test_selected_isa_default_and_override(monkeypatch):
    monkeypatch.delenv("SPARSEKIT_ISA", raising=False)
    best = _native.selected_isa()
    assert best in AVAILABLE
    order = ["avx512", "avx2", "neon", "ref"]
    assert best == next(i for i in order if i in AVAILABLE)
    for isa in AVAILABLE:
        monkeypatch.setenv("SPARSEKIT_ISA", isa)
        assert _native.selected_isa() == isa


def test_selected_isa_bogus_is_an_error(monkeypatch):
    monkeypatch.setenv("SPARSEKIT_ISA", "bogus")
    with pytest.raises(ValueError, match="SPARSEKIT_ISA must be one of ref, avx2, avx512, neon"):
        _native.selected_isa()


def test_selected_isa_unavailable_is_an_error(monkeypatch):
    missing = [i for i in ("avx2", "avx512", "neon") if i not in AVAILABLE]
    if not missing:
        pytest.skip("every ISA is available here")
    monkeypatch.setenv("SPARSEKIT_ISA", missing[0])
    with pytest.raises(ValueError, match="does not support"):
        _native.selected_isa()
