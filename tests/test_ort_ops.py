"""End to end in onnxruntime: every ai.sparsekit op against the equivalent dense ONNX graph run in
stock onnxruntime (Conv/MatMul + Add + Relu/Clip + residual Add), for every ISA the build has,
with 1 and 2 threads."""
from __future__ import annotations

import subprocess
import threading
import zlib

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import sparsekit
from sparsekit import _native
from sparsekit.pack import (make_depthwise_node, make_sparse_conv_node, make_sparse_gemm_node,
                            pack_bank, pack_bsr, unpack)
from ort_helpers import (BANK_SIZE, PATTERNS, assert_close, bank_for, conv_weight, epilogue_nodes,
                         make_model, run_stock, sparse_matrix, vinfo)



# ---------------------------------------------------------------------------------------------
# loading

def test_library_exports_only_register_custom_ops():
    path = sparsekit.get_library_path()
    out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("nm not available")
    syms = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
    assert syms == ["RegisterCustomOps"], syms
    ldd = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    assert "onnxruntime" not in ldd


def test_register_custom_ops_library_directly():
    """Plain onnxruntime API, no helper: the library registers ai.sparsekit's ops."""
    rng = np.random.default_rng(0)
    so = ort.SessionOptions()
    so.register_custom_ops_library(sparsekit.get_library_path())
    w = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    node, inits = make_depthwise_node("dw", "X", "Y", w, pads=(1, 1, 1, 1))
    m = make_model([node], [vinfo("X", [1, 3, 5, 5])], [vinfo("Y", None)], inits)
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    y = s.run(None, {"X": x})[0]
    assert y.shape == (1, 3, 5, 5) and np.isfinite(y).all()


def test_library_path_override(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEKIT_LIBRARY", str(tmp_path / "nope.so"))
    with pytest.raises(sparsekit.SparsekitError, match="SPARSEKIT_LIBRARY"):
        sparsekit.get_library_path()


def test_unknown_or_unavailable_isa_fails_session_creation(monkeypatch):
    rng = np.random.default_rng(0)
    node, inits = make_sparse_gemm_node("fc", "X", "Y", sparse_matrix(rng, 8, 16, 0.5, "bsr4"))
    m = make_model([node], [vinfo("X", [1, 16])], [vinfo("Y", None)], inits)
    monkeypatch.setenv("SPARSEKIT_ISA", "sse9")
    with pytest.raises(Exception, match="SPARSEKIT_ISA=sse9.*must be one of"):
        sparsekit.session(m)
    missing = [i for i in ("avx2", "avx512", "neon") if i not in _native.available_isas()]
    if missing:
        monkeypatch.setenv("SPARSEKIT_ISA", missing[0])
        with pytest.raises(Exception, match=f"SPARSEKIT_ISA={missing[0]}.*does not support"):
            sparsekit.session(m)


# ---------------------------------------------------------------------------------------------
# SparseConv

def conv_models(rng, N, C, H, W, M, k, stride=1, pads=(0, 0, 0, 0), dil=1, sparsity=0.5,
                pattern="bsr4", bias=True, activation="none", clip=(0.0, 6.0), residual=False,
                residual_after_act=False, symbolic=False):
    kh, kw = (k, k) if isinstance(k, int) else k
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    dh, dw = (dil, dil) if isinstance(dil, int) else dil
    fmt, B = PATTERNS[pattern]
    bs = bank_for(C * kh * kw)
    w = conv_weight(rng, M, C, kh, kw, sparsity, pattern, bs)
    b = rng.standard_normal(M).astype(np.float32) if bias else None
    OH = (H + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    OW = (W + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    clip_kw = dict(clip_min=clip[0], clip_max=clip[1]) if activation == "clip" else {}
    node, inits = make_sparse_conv_node(
        "conv", "X", "Y", w, b, fmt=fmt, block=B, bank_size=bs if fmt == "bank" else None, strides=(sh, sw), pads=pads,
        dilations=(dh, dw), activation=activation, residual="R" if residual else None,
        residual_after_act=residual_after_act, **clip_kw)
    xshape = ["N", C, "H", "W"] if symbolic else [N, C, H, W]
    inputs = [vinfo("X", xshape)] + ([vinfo("R", [N, M, OH, OW])] if residual else [])
    sparse = make_model([node], inputs, [vinfo("Y", None)], inits)
    conv = helper.make_node("Conv", ["X", "W"] + (["B"] if bias else []), ["C0"],
                            kernel_shape=[kh, kw], strides=[sh, sw], pads=list(pads),
                            dilations=[dh, dw])
    dinits = [numpy_helper.from_array(w, "W")] + ([numpy_helper.from_array(b, "B")] if bias else [])
    epi, einits = epilogue_nodes("C0", "Y", bias, activation, clip, "R" if residual else None,
                                 residual_after_act)
    dense = make_model([conv] + epi, inputs, [vinfo("Y", None)], dinits + einits, sparse=False)
    feeds = {"X": rng.standard_normal((N, C, H, W)).astype(np.float32)}
    if residual:
        feeds["R"] = rng.standard_normal((N, M, OH, OW)).astype(np.float32)
    return sparse, dense, feeds, C * kh * kw


def check_conv(threads, **kw):
    rng = np.random.default_rng(zlib.crc32(repr(sorted(kw.items())).encode()))
    sparse, dense, feeds, K = conv_models(rng, **kw)
    y = sparsekit.session(sparse, threads=threads).run(None, feeds)[0]
    assert_close(y, run_stock(dense, feeds), K)


GEOMETRIES = {
    # name: (N, C, H, W, M, k, stride, pads, dilation)
    "1x1-small": (1, 16, 14, 14, 24, 1, 1, (0, 0, 0, 0), 1),       # direct, channel split
    "1x1-large-oc10-n2": (2, 8, 20, 21, 10, 1, 1, (0, 0, 0, 0), 1),  # direct, pixel tiles
    "1x1-s2": (1, 12, 15, 15, 8, 1, 2, (0, 0, 0, 0), 1),
    "2x1-pad": (1, 6, 7, 9, 5, (2, 1), 1, (1, 0, 1, 0), 1),  # a 1x1 may not pad (issue 21)
    "3x3-s1-p1": (2, 8, 12, 12, 16, 3, 1, (1, 1, 1, 1), 1),
    "3x3-s2-asym": (1, 8, 13, 16, 12, 3, 2, (0, 0, 1, 1), 1),
    "3x3-large": (1, 4, 30, 33, 7, 3, 1, (1, 1, 1, 1), 1),
    "5x5-s1-p2": (1, 6, 11, 10, 9, 5, 1, (2, 2, 2, 2), 1),
    "5x5-s2": (2, 3, 17, 17, 8, 5, 2, (2, 1, 2, 1), 1),
    "7x7-s2-p3": (1, 3, 32, 32, 16, 7, 2, (3, 3, 3, 3), 1),
    "3x3-dil2": (1, 6, 16, 14, 8, 3, 1, (2, 2, 2, 2), 2),
    "3x3-dil2-s2-nopad": (1, 5, 19, 17, 6, 3, 2, (0, 0, 0, 0), 2),
    "1x3-kernel": (1, 7, 9, 11, 5, (1, 3), (1, 2), (0, 1, 0, 1), 1),
    "big-pads": (1, 3, 4, 5, 4, 3, 1, (2, 0, 2, 2), 1),   # each pad at most k - 1 (issue 21)
    # K = 288 -> im2col panels of ~227 px: several panels per image, balanced tiles
    "3x3-multi-panel": (2, 32, 40, 37, 8, 3, 1, (1, 1, 1, 1), 1),
    "5x5-s2-multi-panel": (1, 24, 45, 41, 6, 5, 2, (2, 2, 2, 2), 1),
    # K = 576 -> panels of ~113 px: a small (<= 196 px) image split over two panels
    "3x3-small-multi-panel": (2, 64, 14, 14, 12, 3, 1, (1, 1, 1, 1), 1),
    # K <= 256, stride 1-2, output rows >= 24 wide: the phase-plane path (bands of rows)
    "stem-3x3-s2": (2, 3, 50, 51, 32, 3, 2, (1, 1, 1, 1), 1),
    "stem-7x7-s2-asym": (1, 3, 70, 61, 20, 7, 2, (3, 2, 2, 3), 1),
    "phase-5x5-s1-tall": (1, 6, 140, 26, 9, 5, 1, (2, 1, 2, 3), 1),
    "phase-3x3-s2-nopad": (2, 4, 33, 63, 12, 3, 2, (0, 0, 0, 0), 1),
    "phase-3x3-s1-pad-right": (1, 8, 19, 24, 6, 3, 1, (0, 0, 2, 2), 1),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("geom", list(GEOMETRIES))
def test_conv_geometry(isa, geom, pattern, threads):
    N, C, H, W, M, k, s, p, d = GEOMETRIES[geom]
    check_conv(threads, N=N, C=C, H=H, W=W, M=M, k=k, stride=s, pads=p, dil=d, pattern=pattern,
               activation="relu")


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("k", [1, 3])
def test_conv_sparsity(isa, k, pattern, sparsity):
    check_conv(2, N=1, C=32, H=14, W=15, M=20, k=k, pads=(k // 2,) * 4, sparsity=sparsity,
               pattern=pattern)


EPILOGUES = {
    "none-nobias": dict(bias=False),
    "relu": dict(activation="relu"),
    "clip06": dict(activation="clip", clip=(0.0, 6.0)),
    "clip-neg": dict(activation="clip", clip=(-0.5, 0.25)),
    "residual": dict(residual=True),
    "residual-relu-before": dict(residual=True, activation="relu"),
    "residual-relu-after": dict(residual=True, activation="relu", residual_after_act=True),
    "residual-clip-after-nobias": dict(residual=True, activation="clip", residual_after_act=True,
                                       bias=False),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k,H", [(1, 9), (1, 20), (3, 9), (3, 20), (3, 30)])
@pytest.mark.parametrize("epi", list(EPILOGUES))
def test_conv_epilogue(isa, epi, k, H, threads):
    check_conv(threads, N=2, C=8, H=H, W=H, M=12, k=k, pads=(k // 2,) * 4, pattern="bsr4",
               **EPILOGUES[epi])


@pytest.mark.parametrize("pattern", ["bsr1", "bank1"])
@pytest.mark.parametrize("H", [7, 17])
@pytest.mark.parametrize("epi", list(EPILOGUES))
def test_conv_epilogue_k_chunked(isa, epi, H, pattern):
    """B = 1 with K = 48*3*3 = 432 reduction rows: the im2col path runs in K chunks (bias on the
    first, partial sums carried as the residual, activation on the last; residual after the
    activation runs unchunked).  H = 7: the small-image path, 17: pixel tiles."""
    check_conv(2, N=2, C=48, H=H, W=H, M=10, k=3, pads=(1, 1, 1, 1), pattern=pattern,
               sparsity=0.7, **EPILOGUES[epi])


@pytest.mark.parametrize("k", [1, 3])
def test_conv_symbolic_shapes_and_changing_sizes(isa, k):
    """H, W, N unknown at creation (per-run offsets); one session, several input sizes."""
    rng = np.random.default_rng(7)
    sparse, dense, _, K = conv_models(rng, N=1, C=8, H=10, W=10, M=12, k=k, pads=(k // 2,) * 4,
                                      symbolic=True, activation="relu")
    s = sparsekit.session(sparse, threads=2)
    for n, h, w in [(1, 10, 10), (3, 5, 7), (1, 30, 31), (2, 1, 1) if k == 1 else (2, 3, 3)]:
        x = rng.standard_normal((n, 8, h, w)).astype(np.float32)
        assert_close(s.run(None, {"X": x})[0], run_stock(dense, {"X": x}), K)


def test_conv_batch_zero():
    rng = np.random.default_rng(3)
    sparse, _, _, _ = conv_models(rng, N=1, C=4, H=6, W=6, M=8, k=3, symbolic=True)
    y = sparsekit.session(sparse).run(None, {"X": np.zeros((0, 4, 6, 6), np.float32)})[0]
    assert y.shape == (0, 8, 4, 4)


def test_huge_pads_refused_at_creation():
    """Issue 21: pads = [2^20, 0, 0, 0] (once inside the documented range) on a 1x128x56x56
    input made one run allocate a 7.2 GB output.  Each pad must be smaller than the dilated
    kernel extent; the session is refused naming the node."""
    rng = np.random.default_rng(21)
    w = conv_weight(rng, 64, 128, 1, 1, 0.5, "bsr4")
    for pads in ([2**20, 0, 0, 0], [0, 0, 0, 1]):
        node, inits = make_sparse_conv_node("big", "X", "Y", w, None, pads=pads)
        m = make_model([node], [vinfo("X", [1, 128, 56, 56])], [vinfo("Y", None)], inits)
        with pytest.raises(Exception, match=r"SparseConv node 'big': attribute 'pads' .* must "
                                            r"be smaller than the dilated kernel extent .*\(1x1\)"):
            sparsekit.session(m)


@pytest.mark.parametrize("op", ["conv", "gemm"])
def test_oversized_output_refused_at_run_and_session_stays_usable(op):
    """An output of more than 2^31 elements is a run error naming the node, raised before
    anything is allocated; the same session then runs a normal input."""
    M = 1 << 16
    vals = np.ones((M // 4, 4), np.float32)          # one block of 4 rows per group, k = 0
    inits = [numpy_helper.from_array(vals, "values"),
             numpy_helper.from_array(np.zeros(M // 4, np.int32), "indices"),
             numpy_helper.from_array(np.arange(M // 4 + 1, dtype=np.int32), "group_ptr")]
    common = dict(name="n", domain="ai.sparsekit", format="bsr", block=4)
    if op == "conv":
        node = helper.make_node("SparseConv", ["X", "values", "indices", "group_ptr"], ["Y"],
                                out_channels=M, in_channels=1, kernel_shape=[1, 1], **common)
        x_big, x_ok = np.zeros((1, 1, 200, 200), np.float32), np.ones((1, 1, 2, 3), np.float32)
        x_decl = ["N", 1, "H", "W"]
    else:
        node = helper.make_node("SparseGemm", ["X", "values", "indices", "group_ptr"], ["Y"],
                                out_features=M, in_features=1, **common)
        x_big, x_ok = np.zeros((40000, 1), np.float32), np.ones((6, 1), np.float32)
        x_decl = ["N", 1]
    s = sparsekit.session(make_model([node], [vinfo("X", x_decl)], [vinfo("Y", None)], inits))
    op_name = "SparseConv" if op == "conv" else "SparseGemm"
    with pytest.raises(Exception, match=rf"{op_name} node 'n': output Y of shape .* would have "
                                        r"2621440000 elements, more than the 2\^31"):
        s.run(None, {"X": x_big})
    y = s.run(None, {"X": x_ok})[0]
    assert y.size == 6 * M and np.all(y == 1.0)


# ---------------------------------------------------------------------------------------------
# SparseGemm

def gemm_models(rng, xshape, M, K, sparsity=0.5, pattern="bsr4", bias=True, activation="none",
                clip=(0.0, 6.0), residual=False, residual_after_act=False, decl_shape=None):
    fmt, B = PATTERNS[pattern]
    bs = bank_for(K)
    w = sparse_matrix(rng, M, K, sparsity, pattern, bs)
    b = rng.standard_normal(M).astype(np.float32) if bias else None
    clip_kw = dict(clip_min=clip[0], clip_max=clip[1]) if activation == "clip" else {}
    node, inits = make_sparse_gemm_node(
        "fc", "X", "Y", w, b, fmt=fmt, block=B, bank_size=bs if fmt == "bank" else None,
        activation=activation, residual="R" if residual else None,
        residual_after_act=residual_after_act, **clip_kw)
    yshape = list(xshape[:-1]) + [M]
    decl = decl_shape or list(xshape)
    inputs = [vinfo("X", decl)] + ([vinfo("R", decl[:-1] + [M])] if residual else [])
    sparse = make_model([node], inputs, [vinfo("Y", None)], inits)
    nodes = [helper.make_node("MatMul", ["X", "WT"], ["P0"])]
    dinits = [numpy_helper.from_array(np.ascontiguousarray(w.T), "WT")]
    cur = "P0"
    if bias:
        nodes.append(helper.make_node("Add", ["P0", "B"], ["P1"]))
        dinits.append(numpy_helper.from_array(b, "B"))
        cur = "P1"
    epi, einits = epilogue_nodes(cur, "Y", bias, activation, clip, "R" if residual else None,
                                 residual_after_act)
    dense = make_model(nodes + epi, inputs, [vinfo("Y", None)], dinits + einits, sparse=False)
    feeds = {"X": rng.standard_normal(xshape).astype(np.float32)}
    if residual:
        feeds["R"] = rng.standard_normal(yshape).astype(np.float32)
    return sparse, dense, feeds


GEMMS = {
    "leading-2x3": ([2, 3, 40], 24),
    "one-row": ([1, 40], 24),
    "rank1": ([40], 9),
    "rows-300": ([300, 40], 13),     # large-rows path, tiles
    "rows-50-k300": ([50, 300], 30),
    "k-one": ([5, 1], 6),
    "rows-2000-k300": ([2000, 300], 10),   # several transposed panels, balanced tiles
    "rows-150-k1024": ([150, 1024], 9),    # few rows over several panels (group split)
    "one-row-k1024": ([1, 1024], 1001),    # classifier: one row read in place, group chunks
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("case", list(GEMMS))
def test_gemm(isa, case, pattern, threads):
    xshape, M = GEMMS[case]
    if pattern.startswith("bank") and xshape[-1] < 4:
        pytest.skip("bank format needs K >= bank_size")
    rng = np.random.default_rng(len(case) * 31 + len(pattern))
    sparse, dense, feeds = gemm_models(rng, xshape, M, xshape[-1], pattern=pattern,
                                       activation="relu")
    y = sparsekit.session(sparse, threads=threads).run(None, feeds)[0]
    assert_close(y, run_stock(dense, feeds), xshape[-1])


@pytest.mark.parametrize("sparsity", [0.0, 0.9, 0.99])
@pytest.mark.parametrize("epi", list(EPILOGUES))
@pytest.mark.parametrize("rows", [1, 7, 250])
def test_gemm_epilogue(isa, epi, rows, sparsity):
    rng = np.random.default_rng(rows)
    sparse, dense, feeds = gemm_models(rng, [rows, 64], 20, 64, sparsity=sparsity, pattern="bsr4",
                                       **EPILOGUES[epi])
    y = sparsekit.session(sparse, threads=2).run(None, feeds)[0]
    assert_close(y, run_stock(dense, feeds), 64)


@pytest.mark.parametrize("pattern", ["bsr1", "bank1"])
@pytest.mark.parametrize("sparsity", [0.0, 0.8, 0.995])
@pytest.mark.parametrize("epi", list(EPILOGUES))
@pytest.mark.parametrize("rows", [7, 130, 250])
def test_gemm_epilogue_k_chunked(isa, epi, rows, sparsity, pattern):
    """B = 1 with K = 700: panels in K chunks (at 0.995 some columns of X go unused, so the
    panel is gathered, not transposed); 130 rows: three tiles of the few-rows path."""
    rng = np.random.default_rng(rows + int(sparsity * 1000))
    sparse, dense, feeds = gemm_models(rng, [rows, 700], 21, 700, sparsity=sparsity,
                                       pattern=pattern, **EPILOGUES[epi])
    y = sparsekit.session(sparse, threads=2).run(None, feeds)[0]
    assert_close(y, run_stock(dense, feeds), 700)


def test_gemm_symbolic_batch(isa):
    rng = np.random.default_rng(11)
    sparse, dense, _ = gemm_models(rng, [1, 48], 17, 48, pattern="bank4", residual=True,
                                   activation="relu", decl_shape=["batch", "seq", 48])
    s = sparsekit.session(sparse, threads=2)
    for shape in [(1, 1, 48), (2, 5, 48), (3, 100, 48), (0, 4, 48)]:
        feeds = {"X": rng.standard_normal(shape).astype(np.float32),
                 "R": rng.standard_normal(shape[:-1] + (17,)).astype(np.float32)}
        assert_close(s.run(None, feeds)[0], run_stock(dense, feeds), 48)


# ---------------------------------------------------------------------------------------------
# DepthwiseConv

DEPTHWISE = {
    # name: (N, C, H, W, k, stride, pads)
    "3x3-s1-p1": (2, 8, 14, 13, 3, 1, (1, 1, 1, 1)),
    "3x3-s2-p1": (1, 16, 15, 16, 3, 2, (1, 1, 1, 1)),
    "3x3-s2-tf": (1, 5, 16, 16, 3, 2, (0, 0, 1, 1)),
    "3x3-nopad": (1, 3, 7, 9, 3, 1, (0, 0, 0, 0)),
    "5x5-s1-p2": (2, 6, 12, 12, 5, 1, (2, 2, 2, 2)),
    "5x5-s2-p2": (1, 7, 17, 19, 5, 2, (2, 2, 2, 2)),
    "7x7-s1": (1, 4, 10, 10, 7, 1, (3, 3, 3, 3)),
    "1x1": (1, 4, 5, 5, 1, 1, (0, 0, 0, 0)),
    "3x3-s3-bigpad": (1, 2, 6, 6, 3, 3, (2, 2, 2, 1)),
    # many channels: runs of channel groups per call, a ragged last run
    "3x3-203ch": (2, 203, 9, 11, 3, 1, (1, 1, 1, 1)),
    "3x3-28x28-37ch": (1, 37, 28, 28, 3, 1, (1, 1, 1, 1)),   # 784 px: channel-vectorised
    "3x3-s2-77ch": (1, 77, 30, 31, 3, 2, (1, 1, 1, 1)),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("epi", ["none-nobias", "relu", "clip06"])
@pytest.mark.parametrize("case", list(DEPTHWISE))
def test_depthwise(isa, case, epi, threads):
    N, C, H, W, k, s, pads = DEPTHWISE[case]
    e = EPILOGUES[epi]
    rng = np.random.default_rng(len(case) + 7 * len(epi))
    w = rng.standard_normal((C, 1, k, k)).astype(np.float32)
    b = None if e.get("bias") is False else rng.standard_normal(C).astype(np.float32)
    act = e.get("activation", "none")
    clip = e.get("clip", (0.0, 6.0))
    clip_kw = dict(clip_min=clip[0], clip_max=clip[1]) if act == "clip" else {}
    node, inits = make_depthwise_node("dw", "X", "Y", w, b, strides=(s, s), pads=pads,
                                      activation=act, **clip_kw)
    inputs = [vinfo("X", [N, C, H, W])]
    sparse = make_model([node], inputs, [vinfo("Y", None)], inits)
    conv = helper.make_node("Conv", ["X", "W"] + (["B"] if b is not None else []), ["C0"],
                            group=C, kernel_shape=[k, k], strides=[s, s], pads=list(pads))
    dinits = [numpy_helper.from_array(w, "W")] + ([numpy_helper.from_array(b, "B")] if b is not None else [])
    epi_nodes, einits = epilogue_nodes("C0", "Y", b is not None, act, clip, None, False)
    dense = make_model([conv] + epi_nodes, inputs, [vinfo("Y", None)], dinits + einits,
                       sparse=False)
    feeds = {"X": rng.standard_normal((N, C, H, W)).astype(np.float32)}
    y = sparsekit.session(sparse, threads=threads).run(None, feeds)[0]
    assert_close(y, run_stock(dense, feeds), k * k)


# ---------------------------------------------------------------------------------------------
# a small network, and concurrent Run() on one session

def _network(rng):
    """X [N, 8, H, W] -> 3x3 conv (im2col) -> depthwise s2 -> 1x1 conv (+residual) -> gemm."""
    w1 = conv_weight(rng, 16, 8, 3, 3, 0.7, "bsr4")
    wd = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)
    w2 = conv_weight(rng, 16, 16, 1, 1, 0.5, "bank1")
    wf = sparse_matrix(rng, 10, 16 * 4 * 4, 0.9, "bsr1")
    b1, bd, b2, bf = (rng.standard_normal(n).astype(np.float32) for n in (16, 16, 16, 10))
    n1, i1 = make_sparse_conv_node("c1", "X", "h1", w1, b1, pads=(1, 1, 1, 1), activation="relu")
    nd, idd = make_depthwise_node("dw", "h1", "h2", wd, bd, strides=(2, 2), pads=(1, 1, 1, 1),
                                  activation="clip", clip_min=0.0, clip_max=6.0)
    n2, i2 = make_sparse_conv_node("c2", "h2", "h3", w2, b2, fmt="bank", block=1,
                                   bank_size=BANK_SIZE, residual="h2", activation="relu",
                                   residual_after_act=True)
    shp = numpy_helper.from_array(np.array([0, -1], np.int64), "shp")
    nr = helper.make_node("Reshape", ["h3", "shp"], ["h4"])
    nf, i_f = make_sparse_gemm_node("fc", "h4", "Y", wf, bf)
    sparse = make_model([n1, nd, n2, nr, nf], [vinfo("X", ["N", 8, 8, 8])], [vinfo("Y", None)],
                        i1 + idd + i2 + [shp] + i_f)
    # the dense equivalent
    cw = lambda n, a: numpy_helper.from_array(a, n)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["X", "w1", "b1"], ["a1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["h1"]),
        helper.make_node("Conv", ["h1", "wd", "bd"], ["a2"], group=16, strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["a2", "lo", "hi"], ["h2"]),
        helper.make_node("Conv", ["h2", "w2", "b2"], ["a3"]),
        helper.make_node("Relu", ["a3"], ["a4"]),
        helper.make_node("Add", ["a4", "h2"], ["h3"]),
        helper.make_node("Reshape", ["h3", "shp"], ["h4"]),
        helper.make_node("Gemm", ["h4", "wf", "bf"], ["Y"], transB=1),
    ]
    inits = [cw("w1", w1), cw("b1", b1), cw("wd", wd), cw("bd", bd), cw("w2", w2), cw("b2", b2),
             cw("wf", wf), cw("bf", bf), cw("lo", np.array(0, np.float32)),
             cw("hi", np.array(6, np.float32)), shp]
    dense = make_model(nodes, [vinfo("X", ["N", 8, 8, 8])], [vinfo("Y", None)], inits,
                       sparse=False)
    return sparse, dense


def test_network_matches_dense(isa):
    rng = np.random.default_rng(5)
    sparse, dense = _network(rng)
    x = rng.standard_normal((3, 8, 8, 8)).astype(np.float32)
    assert_close(sparsekit.session(sparse, threads=2).run(None, {"X": x})[0],
                 run_stock(dense, {"X": x}), 256)


def test_concurrent_run_one_session(isa):
    rng = np.random.default_rng(6)
    sparse, _ = _network(rng)
    s = sparsekit.session(sparse, threads=2)
    xs = [rng.standard_normal((n, 8, 8, 8)).astype(np.float32) for n in (1, 2, 3, 4)]
    expected = [s.run(None, {"X": x})[0] for x in xs]
    errors = []

    def worker(t):
        try:
            for i in range(20):
                x = xs[(t + i) % 4]
                y = s.run(None, {"X": x})[0]
                if not np.array_equal(y, expected[(t + i) % 4]):
                    errors.append(f"thread {t} run {i}: result differs")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(f"thread {t}: {e}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# ---------------------------------------------------------------------------------------------
# the packer itself (independent of onnxruntime)

@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("M,K", [(7, 48), (16, 40), (1, 17), (9, 300)])
def test_pack_roundtrip(pattern, M, K):
    fmt, B = PATTERNS[pattern]
    rng = np.random.default_rng(M * K)
    W = sparse_matrix(rng, M, K, 0.75, pattern)
    p = pack_bsr(W, B) if fmt == "bsr" else pack_bank(W, BANK_SIZE, B)
    assert np.array_equal(unpack(p, M, K, fmt, B, BANK_SIZE if fmt == "bank" else None), W)
    if fmt == "bsr":
        assert p["indices"].dtype == np.uint16 and p["group_ptr"].dtype == np.int32
        assert p["values"].shape == (p["group_ptr"][-1], B)
    else:
        G, nbanks = -(-M // B), -(-K // BANK_SIZE)
        keep = int(round(BANK_SIZE * 0.25))
        assert p["values"].shape == (G, nbanks, keep, B) and p["indices"].dtype == np.uint8


def test_pack_bsr_sizes():
    """1x4 blocks at 90%: values + one uint16 index per block is ~0.11-0.12x the dense bytes."""
    rng = np.random.default_rng(0)
    W = sparse_matrix(rng, 256, 256, 0.9, "bsr4")
    p = pack_bsr(W, 4)
    nbytes = sum(a.nbytes for a in p.values())
    assert nbytes / W.nbytes < 0.13
    big = np.zeros((4, 70000), np.float32)
    big[0, 69999] = 1.0
    assert pack_bsr(big, 4)["indices"].dtype == np.int32


def test_pack_bank_rejects_unbalanced_and_accepts_explicit_keep():
    rng = np.random.default_rng(1)
    W = sparse_matrix(rng, 8, 64, 0.75, "bank1")
    W2 = W.copy()
    r, c = np.argwhere(W2[:, :16] != 0)[0]
    W2[r, c] = 0.0  # one kept weight exactly zero: bank holds 3 instead of 4
    with pytest.raises(sparsekit.SparsekitError, match="not bank-balanced"):
        pack_bank(W2, 16, 1)
    p = pack_bank(W2, 16, 1, keep=4)
    assert np.array_equal(unpack(p, 8, 64, "bank", 1, 16), W2)
    W3 = W.copy()
    W3[0, ~(W3[0] != 0)] = 1.0  # a dense row
    with pytest.raises(sparsekit.SparsekitError, match="not bank-balanced"):
        pack_bank(W3, 16, 1)
    with pytest.raises(sparsekit.SparsekitError, match="larger than K"):
        pack_bank(W, 128, 1)
