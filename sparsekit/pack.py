"""The canonical packed format of docs/format.md: pack, unpack, and ai.sparsekit node builders.

Every sparse op multiplies by a weight matrix ``W2d [M, K]`` (rows = output channels/features,
K = reduction).  A conv weight ``[M, C, kh, kw]`` becomes ``W2d = w.reshape(M, -1)``, so
``k = (c*kh + ky)*kw + kx``.  Rows are grouped in blocks of ``block`` (1 or 4) consecutive rows;
a stored block holds the ``block`` weights of one group at one reduction index.  Which blocks are
kept is read from the zeros: a block is kept when any of its weights is nonzero.  The rules of the
format themselves (groups, banks, index types, the op domain) are :mod:`sparsekit.format`'s.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from onnx import helper, numpy_helper

from .errors import SparsekitError
from .format import (BLOCK_SIZES, DOMAIN, MAX_BANK_SIZE, bank_caps,
                     bank_counts, bsr_index_dtype, group_rows, kept_groups,
                     num_banks, num_groups, pack_bank_blocks)

__all__ = ["ACTIVATIONS", "pack_bsr",
           "pack_bank", "unpack", "pack", "make_sparse_conv_node", "make_sparse_gemm_node",
           "make_depthwise_node", "make_reorder_node", "LAYOUTS"]

ACTIVATIONS = ("none", "relu", "clip")
# Activation layouts of the ops (docs/format.md): NCHW, or 8-channel blocks [N, ceil(C/8), H, W, 8].
LAYOUTS = ("NCHW", "NCHWc8")


# ---------------------------------------------------------------------------------------------
# packing

def _as_w2d(W2d) -> np.ndarray:
    W = np.asarray(W2d)
    if W.ndim != 2:
        raise SparsekitError(f"weight matrix must be 2-D [M, K], got shape {list(W.shape)}")
    if W.shape[0] < 1 or W.shape[1] < 1:
        raise SparsekitError(f"weight matrix must be non-empty, got shape {list(W.shape)}")
    if not np.issubdtype(W.dtype, np.floating):
        raise SparsekitError(f"weight matrix must be floating point, got {W.dtype}")
    return np.ascontiguousarray(W, dtype=np.float32)


def _check_block(block: int) -> int:
    if block not in BLOCK_SIZES:
        raise SparsekitError(f"block must be 1 or 4, got {block}")
    return int(block)


def _grouped(W: np.ndarray, block: int) -> np.ndarray:
    """W [M, K] -> [G, K, B] (a view): Wg[g, k] is group g's block at reduction index k."""
    return group_rows(W, block).transpose(0, 2, 1)


def pack_bsr(W2d, block: int = 4) -> dict:
    """Pack W2d [M, K] into format "bsr": values [nblocks, B], indices [nblocks], group_ptr [G+1].

    indices are uint16 when K <= 65536, else int32; blocks within a group by increasing k.
    """
    W = _as_w2d(W2d)
    B = _check_block(block)
    K = W.shape[1]
    Wg = _grouped(W, B)                      # [G, K, B]
    kept = kept_groups(W != 0, B)            # [G, K]
    g_idx, k_idx = np.nonzero(kept)          # row-major: by group, then increasing k
    counts = kept.sum(axis=1)
    group_ptr = np.zeros(Wg.shape[0] + 1, dtype=np.int32)
    np.cumsum(counts, out=group_ptr[1:])
    if group_ptr[-1] > np.iinfo(np.int32).max:
        raise SparsekitError("too many nonzero blocks for int32 group_ptr")
    idx_dtype = bsr_index_dtype(K)
    return {
        "values": np.ascontiguousarray(Wg[g_idx, k_idx], dtype=np.float32).reshape(-1, B),
        "indices": k_idx.astype(idx_dtype),
        "group_ptr": group_ptr,
    }


def pack_bank(W2d, bank_size: int, block: int = 1, keep: Optional[int] = None) -> dict:
    """Pack a bank-balanced W2d [M, K] into format "bank": values [G, nbanks, keep, B], indices.

    The reduction axis is split into banks of ``bank_size``; every full bank of every group must
    hold the same number ``keep`` of kept blocks and the ragged last bank (if any) exactly
    ``format.ragged_keep(L, keep, bank_size)`` (docs/format.md).  Pass ``keep`` explicitly when some kept
    weights may be exactly zero: banks then need at most that many nonzero blocks, and the
    missing ones are stored as zero-valued padding.  Raises SparsekitError when W2d is not
    bank-balanced.  indices are in-bank offsets: uint8 when bank_size <= 256, else uint16.
    """
    W = _as_w2d(W2d)
    B = _check_block(block)
    K = W.shape[1]
    bank_size = int(bank_size)
    if bank_size < 1 or bank_size > MAX_BANK_SIZE:
        raise SparsekitError(f"bank_size must be in [1, {MAX_BANK_SIZE}], got {bank_size}")
    if bank_size > K:
        raise SparsekitError(f"bank_size {bank_size} is larger than K = {K}; use format 'bsr'")
    counts = bank_counts(kept_groups(W != 0, B), bank_size)   # [G, nbanks]
    full = K // bank_size
    rest = K - full * bank_size
    full_counts = counts[:, :full]
    if keep is None:
        keep = int(full_counts.max()) if full_counts.size else 0
        if (full_counts != keep).any():
            g, b = np.argwhere(full_counts != keep)[0]
            raise SparsekitError(
                f"not bank-balanced with bank_size {bank_size}: group {g} bank {b} keeps "
                f"{full_counts[g, b]} blocks, others {keep} (pass keep= if kept weights can be "
                "zero)")
        strict = True
    else:
        keep = int(keep)
        if keep < 0 or keep > bank_size:
            raise SparsekitError(f"keep must be in [0, bank_size], got {keep}")
        if (full_counts > keep).any():
            g, b = np.argwhere(full_counts > keep)[0]
            raise SparsekitError(f"not bank-balanced: group {g} bank {b} keeps "
                                 f"{full_counts[g, b]} blocks, more than keep = {keep}")
        strict = False
    if rest:
        cap = int(bank_caps(K, bank_size, keep)[-1])
        tail = counts[:, -1]
        bad = (tail != cap) if strict else (tail > cap)
        if bad.any():
            g = int(np.argmax(bad))
            raise SparsekitError(
                f"not bank-balanced: the ragged last bank (length {rest}) of group {g} keeps "
                f"{tail[g]} blocks, expected {'' if strict else 'at most '}{cap} "
                f"(= min(L, ceil(L*keep/bank_size)) with keep {keep})")
    return pack_bank_blocks(_grouped(W, B), bank_size, keep)


def unpack(packed: dict, M: int, K: int, fmt: Optional[str] = None, block: Optional[int] = None,
           bank_size: Optional[int] = None) -> np.ndarray:
    """The dense W2d [M, K] a packed dict stands for (the inverse of pack_bsr/pack_bank).

    ``fmt`` and ``block`` default to what the tensors' shapes say.
    """
    values = np.asarray(packed["values"], dtype=np.float32)
    indices = np.asarray(packed["indices"]).astype(np.int64)
    if fmt is None:
        fmt = "bank" if values.ndim == 4 else "bsr"
    B = int(block or values.shape[-1])
    G = num_groups(M, B)
    Wg = np.zeros((G, K, B), dtype=np.float32)
    if fmt == "bsr":
        gp = np.asarray(packed["group_ptr"], dtype=np.int64)
        if len(gp) != G + 1 or gp[0] != 0 or gp[-1] != len(values) or (np.diff(gp) < 0).any():
            raise SparsekitError("group_ptr does not match the values/M")
        groups = np.repeat(np.arange(G), np.diff(gp))
        if len(indices) and (indices.min() < 0 or indices.max() >= K):
            raise SparsekitError("indices out of range")
        np.add.at(Wg, (groups, indices), values.reshape(-1, B))
    elif fmt == "bank":
        if bank_size is None:
            raise SparsekitError("unpack of format 'bank' needs bank_size")
        Gv, nbanks, keep, _ = values.shape
        if Gv != G or nbanks != num_banks(K, bank_size):
            raise SparsekitError("bank values do not match M/K/bank_size")
        k = np.arange(nbanks)[None, :, None] * bank_size + indices
        if k.size and k.max() >= K:
            raise SparsekitError("bank offsets out of range")
        g = np.broadcast_to(np.arange(G)[:, None, None], k.shape)
        np.add.at(Wg, (g.ravel(), k.ravel()), values.reshape(-1, B))
    else:
        raise SparsekitError(f"unknown format {fmt!r}")
    return Wg.transpose(0, 2, 1).reshape(G * B, K)[:M].copy()


def pack(W2d, fmt: str = "bsr", block: int = 4, bank_size: Optional[int] = None,
         keep: Optional[int] = None) -> dict:
    """pack_bsr or pack_bank by name."""
    if fmt == "bsr":
        if bank_size is not None:
            raise SparsekitError("bank_size is only valid with format 'bank'")
        return pack_bsr(W2d, block)
    if fmt == "bank":
        if bank_size is None:
            raise SparsekitError("format 'bank' needs bank_size")
        return pack_bank(W2d, bank_size, block, keep)
    raise SparsekitError(f"format must be 'bsr' or 'bank', got {fmt!r}")


# ---------------------------------------------------------------------------------------------
# node builders

def _act_attrs(activation: str, clip_min: Optional[float], clip_max: Optional[float]) -> dict:
    if activation not in ACTIVATIONS:
        raise SparsekitError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    attrs = {"activation": activation}
    if activation == "clip":
        lo = -math.inf if clip_min is None else float(clip_min)
        hi = math.inf if clip_max is None else float(clip_max)
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            raise SparsekitError(f"clip_min ({lo}) must be <= clip_max ({hi})")
        attrs["clip_min"] = lo
        attrs["clip_max"] = hi
    elif clip_min is not None or clip_max is not None:
        raise SparsekitError("clip_min/clip_max are only valid with activation 'clip'")
    return attrs


def _sparse_inputs(name: str, x: str, packed: dict, bias, residual: Optional[str]):
    inits = [numpy_helper.from_array(packed["values"], f"{name}.values"),
             numpy_helper.from_array(packed["indices"], f"{name}.indices")]
    inputs = [x, f"{name}.values", f"{name}.indices"]
    if "group_ptr" in packed:
        inits.append(numpy_helper.from_array(packed["group_ptr"], f"{name}.group_ptr"))
        inputs.append(f"{name}.group_ptr")
    else:
        inputs.append("")
    if bias is not None:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(bias, np.float32), f"{name}.bias"))
        inputs.append(f"{name}.bias")
    elif residual:
        inputs.append("")
    if residual:
        inputs.append(residual)
    while inputs and inputs[-1] == "":
        inputs.pop()
    return inputs, inits


def _pair(v, name) -> list:
    v = [int(a) for a in (v if isinstance(v, (list, tuple)) else (v, v))]
    if len(v) != 2:
        raise SparsekitError(f"{name} must have 2 values, got {v}")
    return v


def _pads(p) -> list:
    if isinstance(p, int):
        p = [p] * 4
    p = [int(a) for a in p]
    if len(p) == 2:
        p = p + p
    if len(p) != 4 or min(p) < 0:
        raise SparsekitError(f"pads must be 4 non-negative values [top, left, bottom, right], got {p}")
    return p


def make_sparse_conv_node(name: str, x: str, y: str, weight, bias=None, *, fmt: str = "bsr",
                          block: int = 4, bank_size: Optional[int] = None,
                          keep: Optional[int] = None, strides: Sequence[int] = (1, 1),
                          pads: Sequence[int] = (0, 0, 0, 0), dilations: Sequence[int] = (1, 1),
                          activation: str = "none", clip_min: Optional[float] = None,
                          clip_max: Optional[float] = None, residual: Optional[str] = None,
                          residual_after_act: bool = False, layout: str = "NCHW",
                          input_layout: Optional[str] = None):
    """A SparseConv node for ONNX Conv weight [M, C, kh, kw] (zeros = pruned), group 1.

    pads are ONNX-ordered [top, left, bottom, right].  ``layout="NCHWc8"``: X, Y (and the
    residual) in 8-channel blocks [N, ceil(C/8), H, W, 8]; only for 1x1 convs with stride 1, no
    pads and 1x4 blocks (fmt "bsr" or "bank" with block=4).  ``input_layout="NCHW"`` with
    ``layout="NCHWc8"``: X in NCHW, Y (and the residual) blocked, any geometry, 1x4 blocks (a
    conv that starts a blocked chain).  Returns (NodeProto, [TensorProto]).
    """
    if layout not in LAYOUTS:
        raise SparsekitError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    input_layout = layout if input_layout is None else input_layout
    if input_layout not in LAYOUTS:
        raise SparsekitError(f"input_layout must be one of {', '.join(LAYOUTS)}, "
                             f"got {input_layout!r}")
    if input_layout != "NCHW" and layout == "NCHW":
        raise SparsekitError(f"input_layout {input_layout} needs layout {input_layout}")
    w = np.asarray(weight)
    if w.ndim != 4:
        raise SparsekitError(f"conv weight must be [M, C, kh, kw], got shape {list(w.shape)}")
    M, C, kh, kw = (int(d) for d in w.shape)
    if layout != "NCHW" and int(block) != 4:
        raise SparsekitError(f"layout {layout} needs 1x4 blocks (block=4), got block={block}")
    if input_layout != "NCHW":
        if (kh, kw) != (1, 1) or _pair(strides, "strides") != [1, 1] or any(_pads(pads)):
            raise SparsekitError(f"layout {layout} needs a 1x1 conv with stride 1 and no pads, "
                                 f"got kernel {kh}x{kw}, strides {strides}, pads {pads}")
    packed = pack(w.reshape(M, -1), fmt, block, bank_size, keep)
    if residual_after_act and not residual:
        raise SparsekitError("residual_after_act needs a residual input")
    inputs, inits = _sparse_inputs(name, x, packed, bias, residual)
    attrs = dict(out_channels=M, in_channels=C, kernel_shape=[kh, kw],
                 strides=_pair(strides, "strides"), pads=_pads(pads),
                 dilations=_pair(dilations, "dilations"), format=fmt, block=int(block),
                 residual_after_act=int(bool(residual_after_act)),
                 **_act_attrs(activation, clip_min, clip_max))
    if fmt == "bank":
        attrs["bank_size"] = int(bank_size)
    if layout != "NCHW":  # the default stays implicit: such nodes run on older libraries too
        attrs["layout"] = layout
    if input_layout != layout:
        attrs["input_layout"] = input_layout
    node = helper.make_node("SparseConv", inputs, [y], name=name, domain=DOMAIN, **attrs)
    return node, inits


def make_sparse_gemm_node(name: str, x: str, y: str, weight, bias=None, *, fmt: str = "bsr",
                          block: int = 4, bank_size: Optional[int] = None,
                          keep: Optional[int] = None, activation: str = "none",
                          clip_min: Optional[float] = None, clip_max: Optional[float] = None,
                          residual: Optional[str] = None, residual_after_act: bool = False):
    """A SparseGemm node: Y = act(X @ weight.T + bias [+ residual]), weight [out, in] = W2d.

    (That is Gemm's B with transB=1, or MatMul's B transposed.)  Returns (NodeProto, inits).
    """
    W = _as_w2d(weight)
    M, K = W.shape
    packed = pack(W, fmt, block, bank_size, keep)
    if residual_after_act and not residual:
        raise SparsekitError("residual_after_act needs a residual input")
    inputs, inits = _sparse_inputs(name, x, packed, bias, residual)
    attrs = dict(out_features=M, in_features=K, format=fmt, block=int(block),
                 residual_after_act=int(bool(residual_after_act)),
                 **_act_attrs(activation, clip_min, clip_max))
    if fmt == "bank":
        attrs["bank_size"] = int(bank_size)
    node = helper.make_node("SparseGemm", inputs, [y], name=name, domain=DOMAIN, **attrs)
    return node, inits


def make_depthwise_node(name: str, x: str, y: str, weight, bias=None, *,
                        strides: Sequence[int] = (1, 1), pads: Sequence[int] = (0, 0, 0, 0),
                        activation: str = "none", clip_min: Optional[float] = None,
                        clip_max: Optional[float] = None, layout: str = "NCHW"):
    """A DepthwiseConv node for a depthwise Conv weight [C, 1, k, k] (group = C, dilation 1);
    ``layout="NCHWc8"``: input and output in 8-channel blocks (between Reorder nodes)."""
    if layout not in LAYOUTS:
        raise SparsekitError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    w = np.ascontiguousarray(weight, dtype=np.float32)
    if w.ndim != 4 or w.shape[1] != 1 or w.shape[2] != w.shape[3]:
        raise SparsekitError(f"depthwise weight must be [C, 1, k, k], got {list(w.shape)}")
    inits = [numpy_helper.from_array(w, f"{name}.W")]
    inputs = [x, f"{name}.W"]
    if bias is not None:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(bias, np.float32), f"{name}.bias"))
        inputs.append(f"{name}.bias")
    attrs = dict(kernel_shape=[int(w.shape[2])] * 2, strides=_pair(strides, "strides"),
                 pads=_pads(pads), dilations=[1, 1], **_act_attrs(activation, clip_min, clip_max))
    if layout != "NCHW":  # the default stays implicit: such nodes run on older libraries too
        attrs["layout"] = layout
    node = helper.make_node("DepthwiseConv", inputs, [y], name=name, domain=DOMAIN, **attrs)
    return node, inits


def make_reorder_node(name: str, x: str, y: str, to: str, channels: Optional[int] = None,
                      pool: Optional[str] = None):
    """A Reorder node: ``to="NCHWc8"`` [N, C, H, W] -> [N, ceil(C/8), H, W, 8] (lanes past C
    zero), ``to="NCHW"`` back, keeping ``channels`` channels (required there); with
    ``pool="global_average"`` (to NCHW only) Y is their means over the plane, [N, C, 1, 1]:
    the Reorder and a GlobalAveragePool after it in one op."""
    if to not in LAYOUTS:
        raise SparsekitError(f"to must be one of {', '.join(LAYOUTS)}, got {to!r}")
    attrs = {"to": to}
    if channels is not None:
        attrs["channels"] = int(channels)
    elif to == "NCHW":
        raise SparsekitError("a Reorder to NCHW needs the channel count")
    if pool is not None:
        if pool not in ("none", "global_average") or (pool != "none" and to != "NCHW"):
            raise SparsekitError(f"pool must be 'none', or 'global_average' with to='NCHW', "
                                 f"got {pool!r} with to={to!r}")
        attrs["pool"] = pool
    return helper.make_node("Reorder", [x], [y], name=name, domain=DOMAIN, **attrs), []
