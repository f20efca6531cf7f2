"""Skipping the outputs ReLU will zero (SeerNet, CVPR 2019; docs/predict.md).

A Conv followed by ReLU (or Clip(0, hi)), possibly by a MaxPool, throws away every negative
output (and every output that is no window's maximum).  ``PredictedConv`` (ai.sparsekit) first
predicts each output with low-bit weights (per output channel, quantized here, at convert time)
and 7-bit activations (per image, at run time), then computes in full precision only the outputs
predicted to matter; the rest are 0.  Outputs that are positive but predicted otherwise are lost:
a per-layer margin, chosen on calibration data for a recall target, bounds that.

* :func:`quantize_rows`: symmetric per row, ``bits`` bits;
* :func:`make_predicted_conv_node`: the node and its initializers for an ONNX Conv weight;
* :func:`prediction_units`, :func:`predicted_mask`, :func:`pooled_candidates`: numpy models of
  the op's integer decisions (the reference the kernels are tested against);
* :class:`MarginStats` / :func:`margin_for_recall`: the least margin reaching a recall;
* :func:`rewrite_predicted`: every eligible Conv [-> bias/BatchNormalization] -> ReLU or
  Clip(0, hi) [-> MaxPool] chain of a model replaced by one PredictedConv;
* :func:`plan_predicted`: which of them to replace, from the outputs found unneeded on
  calibration data and (optionally) timing each layer both ways (``convert --predict-relu``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import SparsekitError
from .fuse import GraphIndex, plan_fusion
from .graph import (ONNX_DOMAINS, NameFilter, Replacement, all_names, get_attr, node_names,
                    replace_chains, unique_name)
from .io import as_model
from .format import DOMAIN, conv_geometry_problem, opset_import
from .sessions import session, time_pair

__all__ = ["quantize_rows", "make_predicted_conv_node", "prediction_units", "predicted_mask",
           "Pool", "pooled_candidates", "pooled_output", "MarginStats", "margin_for_recall",
           "rewrite_predicted", "PredictedLayer", "plan_predicted", "DEFAULT_MIN_ZEROS",
           "DEFAULT_BITS", "DEFAULT_RECALL", "NONFINITE_REASON", "all_finite"]

# Least fraction of unneeded outputs (zeros after the activation, or no window's max), measured on
# calibration data, at which a layer is predicted: below it the prediction (a quarter to half of a
# dense conv's cost on AVX2) cannot pay.
DEFAULT_MIN_ZEROS = 0.7
# Bits of the prediction's weights.  8: for the same recall its margins compute 5-25 points fewer
# outputs than 4 bits on real layers (docs/predict.md), which outweighs the AVX2 kernel's ~1.35x
# slower 8-bit prediction (4 bits sum 18 steps of vpmaddubsw in int16 before widening); with
# VNNI or sdot both cost the same.
DEFAULT_BITS = 8
# Fraction of the positive outputs (on calibration data) a predicted layer must keep: the
# margin added to its prediction is the least that reaches it.
DEFAULT_RECALL = 0.999


def quantize_rows(W2d, bits: int = DEFAULT_BITS) -> Tuple[np.ndarray, np.ndarray]:
    """(q int8 [M, K], scale float32 [M]) with W ≈ q * scale[:, None], symmetric per row with
    `bits` bits: |q| <= 2**(bits-1) - 1."""
    W = np.asarray(W2d, np.float32)
    if W.ndim != 2:
        raise SparsekitError(f"expected a 2-D weight, got shape {list(W.shape)}")
    if not 2 <= int(bits) <= 8:
        raise SparsekitError(f"prediction weight bits must be in 2..8, got {bits}")
    qmax = 2 ** (int(bits) - 1) - 1
    amax = np.abs(W).max(axis=1)
    scale = (amax / np.float32(qmax)).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(W / safe[:, None]), -qmax, qmax).astype(np.int8)
    return q, scale


def make_predicted_conv_node(name: str, x: str, y: str, weight, bias=None, *,
                             strides: Sequence[int] = (1, 1),
                             pads: Sequence[int] = (0, 0, 0, 0),
                             dilations: Sequence[int] = (1, 1), activation: str = "relu",
                             clip_max: Optional[float] = None, bits: int = DEFAULT_BITS,
                             margin: int = 0, pool: Optional["Pool"] = None
                             ) -> Tuple[onnx.NodeProto, List[onnx.TensorProto]]:
    """A PredictedConv node for an ONNX Conv weight [M, C, kh, kw] (group 1) followed by ReLU
    (``activation="relu"``) or Clip(0, clip_max) (``"clip"``).  pads are ONNX-ordered
    [top, left, bottom, right].  `bits`: the prediction's weight bits; `margin`: integer
    prediction units added before the decision (more outputs computed, fewer positives lost);
    `pool`: a MaxPool applied after the activation (the node then outputs the pooled tensor).
    Returns (node, initializers named ``<name>.W`` etc.)."""
    w = np.asarray(weight, np.float32)
    if w.ndim != 4:
        raise SparsekitError(f"expected a Conv weight [M, C, kh, kw], got shape {list(w.shape)}")
    if activation not in ("relu", "clip"):
        raise SparsekitError(f"activation must be 'relu' or 'clip', got {activation!r}")
    M = w.shape[0]
    q, scale = quantize_rows(w.reshape(M, -1), bits)
    if not 0 <= int(margin) <= 2 ** 24:
        raise SparsekitError(f"margin must be in [0, 2^24], got {margin}")
    inits = [numpy_helper.from_array(w, f"{name}.W")]
    inputs = [x, f"{name}.W", "", f"{name}.W_q", f"{name}.W_q_scale"]
    if bias is not None:
        b = np.asarray(bias, np.float32).reshape(-1)
        if b.shape != (M,):
            raise SparsekitError(f"bias has shape {list(b.shape)}, expected [{M}]")
        inits.append(numpy_helper.from_array(b, f"{name}.B"))
        inputs[2] = f"{name}.B"
    inits += [numpy_helper.from_array(q, f"{name}.W_q"),
              numpy_helper.from_array(scale, f"{name}.W_q_scale")]
    attrs = dict(kernel_shape=[int(w.shape[2]), int(w.shape[3])], strides=list(strides),
                 pads=list(pads), dilations=list(dilations), activation=activation)
    if margin:
        attrs["margin"] = int(margin)
    if pool is not None:
        attrs.update(pool_kernel=list(pool.kernel), pool_strides=list(pool.strides),
                     pool_pads=list(pool.pads))
    if activation == "clip":
        attrs.update(clip_min=0.0, clip_max=float(np.inf if clip_max is None else clip_max))
    node = helper.make_node("PredictedConv", inputs, [y], name=name, domain=DOMAIN, **attrs)
    return node, inits


def im2col_pixels(x, kh, kw, strides, pads, dil):
    """Pixel-major patches ([N, OH*OW, C*kh*kw] in (c, ky, kx) order, zero outside), OH, OW."""
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    OH = (H + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) // strides[0] + 1
    OW = (W + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // strides[1] + 1
    cols = np.empty((N, OH, OW, C, kh, kw), np.float32)
    for ky in range(kh):
        for kx in range(kw):
            ys, xs = ky * dil[0], kx * dil[1]
            cols[:, :, :, :, ky, kx] = xp[:, :, ys:ys + strides[0] * OH:strides[0],
                                          xs:xs + strides[1] * OW:strides[1]].transpose(0, 2, 3, 1)
    return cols.reshape(N, OH * OW, C * kh * kw), OH, OW


def prediction_units(W, b, x, strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1),
                     bits: int = DEFAULT_BITS):
    """The documented integer prediction, in numpy, for Conv weight W, bias b, input x: yields
    per image (acc [P, M] int64, s [M] float32) where output (m, p) is predicted positive with
    margin u when fma(float32(acc[p, m] + u), s[m], b[m]) > 0; and OH, OW first."""
    M = W.shape[0]
    q, scale = quantize_rows(W.reshape(M, -1), bits)
    q64 = q.astype(np.int64)
    cols, OH, OW = im2col_pixels(x, W.shape[2], W.shape[3], strides, pads, dil)
    yield OH, OW
    for n in range(x.shape[0]):
        lo, hi = min(0.0, float(x[n].min())), max(0.0, float(x[n].max()))
        sx = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(127))
        inv = np.float32(1) / sx if sx > 0 else np.float32(0)
        zx = int(np.floor(np.float32(-lo) / sx + 0.5)) if sx > 0 else 0   # lround, -lo >= 0
        t = (cols[n].astype(np.float32) * inv).astype(np.float32) + np.float32(zx + 0.5)
        xq = np.floor(np.clip(t, 0, 127)).astype(np.int64)
        yield xq @ q64.T - zx * q64.sum(axis=1), (sx * scale).astype(np.float32)


def predicted_mask(W, b, x, strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1),
                   bits: int = DEFAULT_BITS, margin: int = 0):
    """Which outputs PredictedConv computes in full precision ([N, M, OH, OW] bool) for
    Conv weight W, bias b and input x (the reference the kernels are tested against)."""
    it = prediction_units(W, b, x, strides, pads, dil, bits)
    OH, OW = next(it)
    out = np.empty((x.shape[0], W.shape[0], OH * OW), bool)
    bias = np.asarray(b, np.float64)
    for n, (acc, s) in enumerate(it):
        # float32(acc) * s is exact in float64, so the sign matches the kernels' fma
        pred = (acc + int(margin)).astype(np.float32).astype(np.float64) * s.astype(np.float64)
        out[n] = (pred + bias > 0).T
    return out.reshape(x.shape[0], W.shape[0], OH, OW)


def _windows(a: np.ndarray, pool: "Pool", fill) -> np.ndarray:
    """[N, M, OH, OW] -> [N, M, PH, PW, kh*kw]: each max-pooling window's values (fill where
    the window lies over the padding)."""
    (kh, kw), (sh, sw), pads = pool.kernel, pool.strides, pool.pads
    ap = np.pad(a, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])),
                constant_values=fill)
    PH = (ap.shape[2] - kh) // sh + 1
    PW = (ap.shape[3] - kw) // sw + 1
    win = np.lib.stride_tricks.sliding_window_view(ap, (kh, kw), axis=(2, 3))
    return win[:, :, :PH * sh:sh, :PW * sw:sw].reshape(a.shape[0], a.shape[1], PH, PW, kh * kw)


@dataclass(frozen=True)
class Pool:
    """A MaxPool after the activation (2-D, no dilation, floor mode): PredictedConv then
    computes only the outputs that may be each window's maximum."""
    kernel: Tuple[int, int]
    strides: Tuple[int, int]
    pads: Tuple[int, int, int, int]   # top, left, bottom, right


def pooled_candidates(W, b, x, pool: Pool, strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1),
                      bits: int = DEFAULT_BITS, margin: int = 0):
    """For PredictedConv with a MaxPool: (units A [N, M, OH, OW] int64, candidates bool of the
    same shape) where a conv output is a candidate when, in some window holding it,
    A + margin >= the window's largest A and it is predicted positive with the margin."""
    it = prediction_units(W, b, x, strides, pads, dil, bits)
    OH, OW = next(it)
    N, M = x.shape[0], W.shape[0]
    A = np.empty((N, M, OH * OW), np.int64)
    S = np.empty((N, M), np.float64)
    for n, (acc, sc) in enumerate(it):
        A[n], S[n] = acc.T, sc
    A = A.reshape(N, M, OH, OW)
    bias = np.asarray(b, np.float64)[None, :, None, None]
    positive = (A + int(margin)).astype(np.float32).astype(np.float64) * S[:, :, None, None] \
        + bias > 0
    low = np.iinfo(np.int64).min // 2
    win = _windows(A, pool, low)
    near = win + int(margin) >= win.max(axis=-1, keepdims=True)   # per window slot
    return A, _unwindow(near, pool, A.shape, np.logical_or, False) & positive


def _unwindow(slots: np.ndarray, pool: Pool, shape, reduce, init) -> np.ndarray:
    """Per window slot values [N, M, PH, PW, kh*kw] back onto the conv outputs [N, M, OH, OW],
    combining the windows that share an output with `reduce` (init where none)."""
    N, M, OH, OW = shape
    (kh, kw), (sh, sw), pads = pool.kernel, pool.strides, pool.pads
    PH, PW = slots.shape[2:4]
    out = np.full((N, M, OH + pads[0] + pads[2], OW + pads[1] + pads[3]), init, slots.dtype)
    sw_ = slots.reshape(N, M, PH, PW, kh, kw)
    for i in range(kh):
        for j in range(kw):
            view = out[:, :, i:i + PH * sh:sh, j:j + PW * sw:sw]
            view[...] = reduce(view, sw_[:, :, :, :, i, j])
    return out[:, :, pads[0]:pads[0] + OH, pads[1]:pads[1] + OW]


def pooled_output(y_act, cand, pool: Pool) -> np.ndarray:
    """What PredictedConv with a MaxPool outputs, given the exact activation output y_act and
    the candidates: per window the largest candidate's value, 0 without one."""
    return _windows(np.where(cand, y_act, 0).astype(np.float32), pool, 0).max(axis=-1)


class MarginStats:
    """Streams, over calibration batches, the margin each output of one layer needs to be
    predicted positive (histograms); :meth:`margin` picks the least margin reaching a recall,
    :meth:`recall` and :meth:`computed` say what a margin keeps and costs."""

    CAP = 1 << 16   # needs beyond this count as "never" (margin 2^24 computes everything)

    def __init__(self, W, b, strides, pads, dil, bits, pool: Optional[Pool] = None):
        self.W = np.asarray(W, np.float32)
        self.b = np.asarray(b, np.float64)
        self.geom = (tuple(strides), tuple(pads), tuple(dil))
        self.bits = bits
        self.pool = pool
        # needs of the positive outputs (with a MaxPool: of the windows with a positive max)
        self.pos = np.zeros(self.CAP + 2, np.int64)
        self.all = np.zeros(self.CAP + 2, np.int64)   # needs of every conv output

    def _hist(self, needs: np.ndarray) -> np.ndarray:
        return np.bincount(np.clip(needs, 0, self.CAP + 1).astype(np.int64).ravel(),
                           minlength=self.CAP + 2)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """x: the layer's input batch, y: its activation's output (before any MaxPool),
        [N, M, OH, OW]."""
        it = prediction_units(self.W, self.b, np.asarray(x, np.float32), *self.geom, self.bits)
        OH, OW = next(it)
        N, M = y.shape[:2]
        A = np.empty((N, M, OH * OW), np.int64)
        S = np.empty((N, M), np.float64)
        for n, (acc, sc) in enumerate(it):
            A[n], S[n] = acc.T, sc
        ok = S > 0                                   # S == 0: the decision is the bias alone
        b = np.broadcast_to(self.b[None, :], S.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            # least u with (A + u) * s + b > 0 (real arithmetic; the kernels round once)
            need = np.floor(-b[..., None] / np.where(ok, S, 1.0)[..., None] - A) + 1
        need = np.where(ok[..., None], need, np.where(b > 0, 0, self.CAP + 1)[..., None])
        need = np.clip(need, 0, self.CAP + 1).astype(np.int64).reshape(N, M, OH, OW)
        y = np.asarray(y)
        if self.pool is None:
            self.all += self._hist(need)
            self.pos += self._hist(need[y > 0])
            return
        # with a MaxPool: an output is computed once its margin also reaches its window's
        # largest units (in the window that asks least); a window is right once one of its
        # true maxima is computed
        A = A.reshape(N, M, OH, OW)
        low = np.iinfo(np.int64).min // 2
        wa = _windows(A, self.pool, low)
        slot = np.maximum(wa.max(axis=-1, keepdims=True) - wa,
                          _windows(need, self.pool, self.CAP + 1))
        slot = np.clip(slot, 0, self.CAP + 1)
        self.all += self._hist(_unwindow(slot, self.pool, A.shape, np.minimum, self.CAP + 1))
        wy = _windows(y.astype(np.float32), self.pool, -1.0)
        ymax = wy.max(axis=-1, keepdims=True)
        wneed = np.where(wy == ymax, slot, self.CAP + 1).min(axis=-1)
        self.pos += self._hist(wneed[ymax[..., 0] > 0])

    @staticmethod
    def unneeded(y: np.ndarray, pool: Optional[Pool]) -> Tuple[int, int]:
        """(outputs the layer's result does not depend on, outputs): zeros after the activation,
        and with a MaxPool also the outputs that are no window's maximum."""
        y = np.asarray(y)
        if pool is None:
            return int((y == 0).sum()), int(y.size)
        wy = _windows(y.astype(np.float32), pool, -1.0)
        top = (wy == wy.max(axis=-1, keepdims=True)) & (wy > 0)
        used = _unwindow(top, pool, y.shape, np.logical_or, False)
        return int(y.size - used.sum()), int(y.size)

    def margin(self, recall: float) -> int:
        """Least margin (prediction units) keeping `recall` of the positives seen."""
        total = int(self.pos.sum())
        if total == 0:
            return 0
        cum = np.cumsum(self.pos)
        u = int(np.searchsorted(cum, float(recall) * total - 1e-9))
        return u if u <= self.CAP else 2 ** 24

    def recall(self, margin: int) -> float:
        total = int(self.pos.sum())
        return 1.0 if total == 0 else float(self.pos[:min(margin, self.CAP + 1) + 1].sum()) / total

    def computed(self, margin: int) -> float:
        return float(self.all[:min(margin, self.CAP + 1) + 1].sum()) / max(1, int(self.all.sum()))


def margin_for_recall(W, b, x, y, recall: float = DEFAULT_RECALL, strides=(1, 1),
                      pads=(0, 0, 0, 0), dil=(1, 1), bits: int = DEFAULT_BITS) -> int:
    """The least margin with which the prediction keeps `recall` of the positive outputs y
    (after the activation) of Conv W, b on input x."""
    st = MarginStats(W, b, strides, pads, dil, bits)
    st.add(x, y)
    return st.margin(recall)


@dataclass
class PredictedLayer:
    """One Conv of the model and what :func:`rewrite_predicted` / :func:`plan_predicted` did
    with it."""
    name: str
    input: str          # the Conv's input tensor
    output: str         # the tensor the activation wrote (PredictedConv writes it now)
    weight_shape: List[int]
    activation: str     # "relu" | "clip" | "" when not eligible
    replaced: bool
    reason: str
    zeros: Optional[float] = None         # fraction of zeros after the activation (calibration)
    dense_ms: Optional[float] = None      # timed both ways (plan_predicted with autotune)
    predicted_ms: Optional[float] = None
    margin: Optional[int] = None          # prediction margin (for the recall target)
    activation_output: str = ""           # the activation's output (before a fused MaxPool)
    pool: Optional[Pool] = None
    recall: Optional[float] = None        # measured on the calibration data with that margin
    computed: Optional[float] = None      # fraction of outputs computed in full precision
    node: str = ""                        # the PredictedConv written for it

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _max_pool(node: onnx.NodeProto) -> Optional[Pool]:
    """The MaxPool PredictedConv can fuse (2-D, one output, no dilation, floor mode), else
    None."""
    if node.op_type != "MaxPool" or node.domain not in ONNX_DOMAINS:
        return None
    if len([o for o in node.output if o]) != 1:
        return None
    k = [int(v) for v in (get_attr(node, "kernel_shape") or [])]
    if len(k) != 2 or int(get_attr(node, "ceil_mode", 0)) != 0:
        return None
    if get_attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    if any(int(v) != 1 for v in (get_attr(node, "dilations") or [1, 1])):
        return None
    st = [int(v) for v in (get_attr(node, "strides") or [1, 1])]
    pd = [int(v) for v in (get_attr(node, "pads") or [0, 0, 0, 0])]
    if len(st) != 2 or len(pd) != 4 or any(p >= kk for p, kk in zip(pd, k + k)):
        return None
    return Pool((k[0], k[1]), (st[0], st[1]), (pd[0], pd[1], pd[2], pd[3]))


# Why a layer whose weights or biases (its own, or what fusion folds in) hold NaN/Inf stays as
# it is: every ai.sparsekit op refuses non-finite weights at session creation, and stock
# onnxruntime gives the reference behaviour (NaN/Inf propagate through the layer).
NONFINITE_REASON = "non-finite weights (kept in onnxruntime, which propagates them)"


def all_finite(*arrays) -> bool:
    """True when no array (None is skipped) holds NaN or +-Inf; min/max, so no mask is made."""
    for a in arrays:
        if a is None:
            continue
        a = np.asarray(a)
        if a.size and not (np.isfinite(a.min()) and np.isfinite(a.max())):
            return False
    return True


def rewrite_predicted(model, include: Optional[str] = None, exclude: Optional[str] = None, *,
                      bits: int = DEFAULT_BITS, margins: Optional[Dict[str, int]] = None,
                      pool: bool = True) -> Tuple[onnx.ModelProto, List[PredictedLayer]]:
    """A copy of `model` where every eligible chain  Conv (group 1, constant float weight) ->
    [constant Add | BatchNormalization]* -> Relu | Clip(0, hi) [-> MaxPool]  is one
    PredictedConv writing the chain's output (with `pool`, a MaxPool that is the activation's
    only reader joins the chain); and a row per Conv saying why it was or was not replaced.  `include` /
    `exclude`: regular expressions on node names; `bits`: the prediction's weight bits;
    `margins`: per Conv name, the prediction margin (default 0).  The input model is not
    modified."""
    src = as_model(model)
    m = onnx.ModelProto()
    m.CopyFrom(src)
    g = m.graph
    index = GraphIndex(m)
    names = node_names(g)
    taken = all_names(g)
    names_selected = NameFilter(include, exclude)
    rows: List[PredictedLayer] = []
    replace = {}  # node index -> (new node, inits, the nodes after it that it absorbs)
    for i, node in enumerate(g.node):
        if node.op_type != "Conv" or node.domain not in ONNX_DOMAINS:
            continue
        name = names[i]
        W = index.constant(node.input[1]) if len(node.input) > 1 else None
        row = PredictedLayer(name, node.input[0], node.output[0],
                             list(W.shape) if W is not None else [], "", False, "")
        rows.append(row)
        if not names_selected.selects(name):
            row.reason = "excluded by --include/--exclude"
            continue
        if W is None or W.dtype != np.float32 or W.ndim != 4:
            row.reason = "weight is not a constant float32 [M, C, kh, kw]"
            continue
        if int(get_attr(node, "group", 1)) != 1:
            row.reason = "grouped conv (PredictedConv is group 1)"
            continue
        if get_attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            row.reason = "auto_pad is not supported"
            continue
        b = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and b is None:
            row.reason = "bias is not a constant"
            continue
        f = plan_fusion(index, node, int(W.shape[0]), True, None, {}, allow_residual=False)
        if f.activation == "none" or f.clip_min != 0.0:
            row.reason = "not followed by ReLU or Clip(0, hi)"
            continue
        Wf, bf = f.apply(W, b)
        if not all_finite(W, b, Wf, bf, f.scale, f.bias):
            row.activation, row.reason = f.activation, NONFINITE_REASON  # a chain, kept as is
            continue
        pads = [int(v) for v in (get_attr(node, "pads") or [0, 0, 0, 0])]
        strides = [int(v) for v in (get_attr(node, "strides") or [1, 1])]
        dilations = [int(v) for v in (get_attr(node, "dilations") or [1, 1])]
        why = (conv_geometry_problem(W.shape[2:], strides, dilations, pads)
               if len(pads) == 4 and len(strides) == len(dilations) == 2
               else f"pads {pads} / strides {strides} / dilations {dilations} are not 2-D")
        if why:
            row.reason = why
            continue
        base = unique_name(f"{name}.predicted", taken)
        mp = index.sole_consumer(f.output) if pool else None
        pl = _max_pool(mp) if mp is not None else None
        out = mp.output[0] if pl is not None else f.output
        new, inits = make_predicted_conv_node(
            base, node.input[0], out, Wf, bf,
            strides=strides, pads=pads, dilations=dilations,
            activation=f.activation, clip_max=f.clip_max if f.activation == "clip" else None,
            bits=bits, margin=int((margins or {}).get(name, 0)), pool=pl)
        taken.update(t.name for t in inits)
        replace[i] = (new, inits, list(f.nodes) + ([mp] if pl is not None else []))
        row.activation, row.replaced, row.output = f.activation, True, out
        row.activation_output, row.pool = f.output, pl
        row.reason = "+".join(f.steps + (["MaxPool"] if pl is not None else []))
        row.node = base
        row.margin = int((margins or {}).get(name, 0))
    replace_chains(m, [Replacement([g.node[i]] + chain, new, inits, range(1, len(new.input)))
                       for i, (new, inits, chain) in replace.items()], opset=opset_import())
    return m, rows


def plan_predicted(model, calibration, *, min_zeros: float = DEFAULT_MIN_ZEROS,
                   recall: float = DEFAULT_RECALL, bits: int = DEFAULT_BITS,
                   autotune: bool = False, threads: Optional[int] = None,
                   include: Optional[str] = None, exclude: Optional[str] = None,
                   progress: Optional[Callable[[int, int, str], None]] = None
                   ) -> Tuple[onnx.ModelProto, List[PredictedLayer]]:
    """Replace the eligible Conv -> ReLU/Clip(0, hi) chains that pay by PredictedConv.

    `model` may already hold ai.sparsekit ops (a converted model): only plain Convs are
    candidates.  `calibration`: a :class:`sparsekit.calibration.Calibration`; each candidate's
    output zeros are counted over it, and layers with fewer than `min_zeros` stay.  Each
    remaining layer gets the least prediction margin that keeps `recall` of its positive outputs
    on the calibration data (`bits`: the prediction's weight bits).  With `autotune` each is
    also timed alone both ways (onnxruntime Conv + activation vs PredictedConv, batch 1 of the
    calibration's first sample, `threads` threads) and stays unless PredictedConv is faster.
    progress(done, total, what) after each step.  Returns (model, one row per Conv)."""
    if not 0.0 <= float(min_zeros) <= 1.0:
        raise SparsekitError(f"min_zeros must be in [0, 1], got {min_zeros}")
    if not 0.0 < float(recall) <= 1.0:
        raise SparsekitError(f"recall must be in (0, 1], got {recall}")
    src = as_model(model)
    full, rows = rewrite_predicted(src, include, exclude, bits=bits)
    cands = [r for r in rows if r.replaced]
    if not cands:
        return rewrite_predicted(src, include="(?!)")[0], rows
    # zeros after each candidate's activation, over the calibration data
    probe = onnx.ModelProto()
    probe.CopyFrom(src)
    graph_inputs = {v.name for v in probe.graph.input}
    outs = [t for t in dict.fromkeys([r.activation_output for r in cands] +
                                     [r.input for r in cands]) if t not in graph_inputs]
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend([helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                               for t in outs if t not in have])
    total = 2 + (len(cands) if autotune else 0)
    if progress:
        progress(0, total, "counting zeros on the calibration data")
    sess = session(probe)

    def tensors():
        for feeds in calibration.batches():
            yield {**feeds, **dict(zip(outs, sess.run(outs, feeds)))}

    zeros = {r.name: [0, 0] for r in cands}
    first_input = {}
    for vals in tensors():
        for r in cands:
            z, n = MarginStats.unneeded(vals[r.activation_output], r.pool)
            zeros[r.name][0] += z
            zeros[r.name][1] += n
            first_input.setdefault(r.input, np.asarray(vals[r.input][:1], np.float32))
    kept = []
    for r in cands:
        z, n = zeros[r.name]
        r.zeros = z / max(1, n)
        r.replaced = False
        if r.zeros < min_zeros:
            r.reason = f"unneeded < {min_zeros:.0%}"
        else:
            kept.append(r)
    # the margin each kept layer needs for the recall target, from a second pass
    if progress:
        progress(1, total, "choosing prediction margins")
    stats = {r.name: _margin_stats(full, r, bits) for r in kept}
    if kept:
        for vals in tensors():
            for r in kept:
                stats[r.name].add(vals[r.input], vals[r.activation_output])
    margins = {}
    for r in kept:
        st = stats[r.name]
        r.margin = margins[r.name] = st.margin(recall)
        r.recall, r.computed = st.recall(r.margin), st.computed(r.margin)
    chosen = []
    if progress:
        progress(2, total, "")
    for i, r in enumerate(kept):
        if autotune:
            r.dense_ms, r.predicted_ms = _time_layer(src, r, first_input[r.input], threads, bits,
                                                     r.margin)
            if progress:
                progress(3 + i, total, r.name)
            if r.predicted_ms >= r.dense_ms:
                r.reason = "slower when timed"
                continue
        r.reason = "faster when timed" if autotune else f"unneeded >= {min_zeros:.0%}"
        chosen.append(r.name)
    pattern = "^(" + "|".join(re.escape(n) for n in chosen) + ")$" if chosen else "(?!)"
    out, done = rewrite_predicted(src, include=pattern, bits=bits, margins=margins)
    for r, d in zip(rows, done):
        r.replaced = d.replaced
        if not r.replaced:
            r.node = ""
    return out, rows


def _margin_stats(rewritten: onnx.ModelProto, row: PredictedLayer, bits: int) -> MarginStats:
    """MarginStats for the PredictedConv `rewritten` holds for `row` (fused weight and bias)."""
    node = next(n for n in rewritten.graph.node if n.name == row.node)
    inits = {t.name: t for t in rewritten.graph.initializer}
    W = numpy_helper.to_array(inits[node.input[1]])
    b = (numpy_helper.to_array(inits[node.input[2]]) if node.input[2]
         else np.zeros(W.shape[0], np.float32))
    return MarginStats(W, b, get_attr(node, "strides"), get_attr(node, "pads"),
                       get_attr(node, "dilations"), bits, row.pool)


def _time_layer(model: onnx.ModelProto, row: PredictedLayer, x: np.ndarray,
                threads: Optional[int], bits: int, margin: int) -> Tuple[float, float]:
    """(dense ms, PredictedConv ms) for the candidate alone on input x, interleaved medians."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    keep = _chain(g, row)
    sub = helper.make_graph(keep, "layer",
                            [helper.make_tensor_value_info(row.input, onnx.TensorProto.FLOAT,
                                                           list(x.shape))],
                            [helper.make_tensor_value_info(row.output, onnx.TensorProto.FLOAT,
                                                           None)],
                            [t for t in g.initializer
                             if t.name in {i for n in keep for i in n.input}])
    dense = helper.make_model(sub, opset_imports=[o for o in m.opset_import if o.domain != DOMAIN],
                              ir_version=m.ir_version)
    pred, _ = rewrite_predicted(dense, include="^" + re.escape(row.name) + "$", bits=bits,
                                margins={row.name: margin})
    feeds = {row.input: np.ascontiguousarray(x, np.float32)}
    return time_pair(dense, pred, feeds, threads)


def _chain(g: onnx.GraphProto, row: PredictedLayer) -> List[onnx.NodeProto]:
    """The Conv named row.name, the nodes after it up to the one writing row.output, and the
    Constant nodes they read (e.g. Clip bounds)."""
    names = node_names(g)
    start = names.index(row.name)
    out = [g.node[start]]
    cur = g.node[start].output[0]
    for n in g.node[start + 1:]:
        if cur == row.output:
            break
        if cur in n.input:
            out.append(n)
            cur = n.output[0]
    read = {i for n in out for i in n.input}
    consts = [n for n in g.node if n.op_type == "Constant" and n.output and n.output[0] in read]
    return consts + out
