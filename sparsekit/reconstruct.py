"""One-shot reconstruction: choose each layer's mask and update its kept weights from calibration data.

For a layer ``y = W x`` (``W[M, K]`` as in docs/format.md; ``x`` a Gemm/MatMul input row or a
Conv im2col patch) the error of a pruned ``W'`` on the calibration inputs is
``tr((W' - W*) H (W' - W*)ᵀ)`` with ``H = mean(x xᵀ)`` the input Gram matrix.  Following
SparseGPT (Frantar & Alistarh 2023), the columns are visited left to right; the error of zeroing
column j is spread onto the columns not yet visited through the Cholesky factor of ``H⁻¹``
(the optimal brain surgeon update), and the mask is chosen block by block by the second-order
saliency ``w² / [H⁻¹]jj`` inside the pattern's constraints:

* bank-balanced: each bank of each row (or 1xB row group) keeps its fixed count, chosen when the
  sweep reaches the bank;
* blocks AxB: blocks of the same shape as :func:`sparsekit.patterns.block_mask`, the layer's keep
  count spread evenly over the column blocks of the sweep;
* unstructured: single weights, counts spread the same way.

Targets: with ``match="dense"`` (default) ``W*`` reproduces the dense model's layer output from
the inputs the already-pruned upstream layers now produce (``W* = W G H⁻¹`` with ``G`` the
cross-Gram of dense and pruned inputs), so each layer also absorbs the error that arrives from
above; ``match="layer"`` keeps ``W* = W`` (SparseGPT's own target).  Afterwards, with
``channel_correction``, each output channel's weight row is scaled so its output spread matches
the reference's (the dense model's output, or with match="layer" the layer's own), and the bias
absorbs the mean output shift (bias correction).  docs/accuracy.md has the derivation and
measurements.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import onnx

from .errors import SparsekitError
from .graph import Layer, all_names, get_attr, resolve_pads, set_initializer, unique_name
from .patterns import bank_keep_counts, keep_count, topk_flat
from .sessions import session

__all__ = ["LayerStats", "capture_stats", "reconstruct", "layer_error", "supports",
           "DEFAULT_DAMP", "MATCH_MODES", "CHANNEL_SCALE_RANGE"]

DEFAULT_DAMP = 0.01        # H += damp · mean(diag H) · I, as SparseGPT
MATCH_MODES = ("dense", "layer")
_SWEEP_BLOCK = 128         # columns per lazy-update block (blocks and unstructured)
_MAX_PATCH_ELEMENTS = 1 << 24   # im2col rows are produced in chunks of at most this many floats
# match="dense" refits every weight of the layer; when that cannot be validated (one batch), it
# needs this many input vectors per input (a classifier sees one per sample: MobileNetV2's, refit
# from 128 samples, agreed 62% with the dense model, 88% with SparseGPT's own target)
DENSE_MIN_ROWS = 4
# channel correction's bounds on a row's scale: a pruned channel whose spread is off by more than
# 2x has lost what it computed (the reconstruction keeps little of the reference's direction), and
# scaling that up would amplify its error rather than restore its spread
CHANNEL_SCALE_RANGE = (0.5, 2.0)
# variances below this fraction of the layer's mean reference variance are taken as constant
# channels (a dead ReLU input): nothing to match, scale 1
_FLAT_VARIANCE = 1e-10


def supports(layer: Layer) -> Optional[str]:
    """None when the layer can be reconstructed, else why it is pruned by magnitude instead."""
    if layer.op in ("LSTM", "GRU"):
        return f"{layer.op} weights are pruned by magnitude (no reconstruction for recurrences)"
    if layer.op == "Conv" and layer.group != 1:
        return "grouped conv: pruned by magnitude (reconstruction handles group 1)"
    return None


# --------------------------------------------------------------------------- input statistics

@dataclass
class LayerStats:
    """Second moments of one layer's inputs over the calibration data (float64)."""

    gram: np.ndarray                  # H = mean(x xᵀ) of the inputs the layer now receives
    mean: np.ndarray                  # mean(x)
    rows: int                         # how many x were averaged
    cross: Optional[np.ndarray] = None        # mean(x x_denseᵀ), with match="dense"
    mean_dense: Optional[np.ndarray] = None   # mean(x_dense)
    gram_dense: Optional[np.ndarray] = None   # mean(x_dense x_denseᵀ)
    halves: Optional[Tuple["LayerStats", "LayerStats"]] = None   # even / odd batches, to validate


def _patches(layer: Layer, x: np.ndarray) -> Iterator[np.ndarray]:
    """The layer's input activation -> rows ``x`` of length K (float32), in bounded chunks."""
    node = layer.node
    if layer.op == "Gemm":
        a = x.reshape(x.shape[0], -1) if x.ndim != 2 else x
        yield np.ascontiguousarray(a.T if int(get_attr(node, "transA", 0)) else a, dtype=np.float32)
        return
    if layer.op == "MatMul":
        yield np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
        return
    # Conv, group 1: im2col with the (C, k1, k2, ...) order of the flattened weight
    kernel = list(layer.kernel_shape)
    nd = len(kernel)
    strides = list(get_attr(node, "strides", [1] * nd))
    dil = list(get_attr(node, "dilations", [1] * nd))
    pads, why = resolve_pads(node, x.shape[2:], kernel, strides, dil)
    if pads is None:
        raise SparsekitError(f"{layer.name}: {why}")
    per_sample = int(np.prod(x.shape[1:])) * max(1, int(np.prod(kernel)))
    step = max(1, _MAX_PATCH_ELEMENTS // max(per_sample, 1))
    for i in range(0, x.shape[0], step):
        xs = x[i:i + step].astype(np.float32, copy=False)
        if all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(pads):
            yield np.ascontiguousarray(np.moveaxis(xs, 1, -1).reshape(-1, xs.shape[1]))
            continue
        xp = np.pad(xs, [(0, 0), (0, 0)] + [(pads[d], pads[d + nd]) for d in range(nd)])
        span = [d * (k - 1) + 1 for d, k in zip(dil, kernel)]
        win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
        sl = ((slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
              + tuple(slice(None, None, d) for d in dil))
        win = win[sl]                                   # [N, C, o1.., k1..]
        order = [0] + list(range(2, 2 + nd)) + [1] + list(range(2 + nd, 2 + 2 * nd))
        yield np.ascontiguousarray(win.transpose(order)).reshape(-1, layer.K)


def _session(model: onnx.ModelProto, outputs: List[str]):
    """An onnxruntime session of ``model`` whose outputs are the given tensors (only the nodes
    they need run: onnxruntime drops the rest)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for name in outputs:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    try:
        # a dense model: stock onnxruntime, without the custom-op library
        return session(m, custom_ops=False, log_severity_level=3)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SparsekitError(f"onnxruntime could not run the model to capture layer inputs: {first}") \
            from None


def _activations(model: onnx.ModelProto, tensors: List[str], feeds: Iterator[Dict[str, np.ndarray]]
                 ) -> Iterator[Dict[str, np.ndarray]]:
    """``{tensor: value}`` per calibration batch; graph inputs are passed through."""
    inputs = {v.name for v in model.graph.input}
    computed = [t for t in tensors if t not in inputs]
    sess = _session(model, computed) if computed else None
    for feed in feeds:
        got = dict(zip(computed, sess.run(computed, feed))) if sess else {}
        yield {t: (feed[t] if t in inputs else got[t]) for t in tensors}


def capture_stats(model: onnx.ModelProto, layers: List[Layer], batches: Callable[[], Iterator],
                  dense: Optional[onnx.ModelProto] = None) -> Dict[str, LayerStats]:
    """Gram matrices of the layers' inputs in ``model`` over the calibration batches, keyed by
    layer name; with ``dense`` also the cross moments with the same inputs in the dense model
    (the two run batch by batch in lockstep, so memory stays one batch per model)."""
    tensors = sorted({c.node.input[0] for c in layers})
    with_dense = dense is not None

    def zeros(c: Layer) -> list:
        K = c.K
        return [np.zeros((K, K)), np.zeros(K), 0] + (
            [np.zeros((K, K)), np.zeros(K), np.zeros((K, K))] if with_dense else [None] * 3)

    # moments of even and odd batches apart: the refit of match="dense" is validated across them
    acc = {c.name: (zeros(c), zeros(c)) for c in layers}
    runs = _activations(model, tensors, batches())
    dense_runs = _activations(dense, tensors, batches()) if dense is not None else None
    for b, acts in enumerate(runs):
        dacts = next(dense_runs) if dense_runs is not None else None
        for c in layers:
            a = acc[c.name][b % 2]
            xs = _patches(c, acts[c.node.input[0]])
            ds = _patches(c, dacts[c.node.input[0]]) if dacts is not None else None
            for p in xs:
                a[0] += (p.T @ p).astype(np.float64)
                a[1] += p.sum(axis=0, dtype=np.float64)
                a[2] += p.shape[0]
                if ds is not None:
                    q = next(ds)
                    a[3] += (p.T @ q).astype(np.float64)
                    a[4] += q.sum(axis=0, dtype=np.float64)
                    a[5] += (q.T @ q).astype(np.float64)
    out = {}
    for c in layers:
        even, odd = acc[c.name]
        total = [None if x is None else x + y for x, y in zip(even, odd)]
        parts = [_moments(v) for v in (even, odd)] if even[2] and odd[2] else None
        out[c.name] = _moments(total, tuple(parts) if parts else None)
    return out


def _moments(acc: list, halves=None) -> LayerStats:
    n = max(acc[2], 1)
    H, mu, _, G, mud, Hd = (None if v is None else v / n for v in acc)
    return LayerStats(H, mu, acc[2], G, mud, Hd, halves)


# --------------------------------------------------------------------------- the sweep

def _inverse_factor(H: np.ndarray, damp: float) -> Tuple[np.ndarray, float]:
    """(upper U with U^T U = H⁻¹, the damping used); more damping while not PD."""
    K = H.shape[0]
    scale = float(np.mean(np.diag(H)))
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    for attempt in range(6):
        lam = damp * (10.0 ** attempt) if damp > 0 else (0.0 if attempt == 0 else 1e-6 * 10 ** attempt)
        Hd = H + lam * scale * np.eye(K)
        try:
            L = np.linalg.cholesky(Hd)
            Linv = np.linalg.inv(L)
            U = np.linalg.cholesky(Linv.T @ Linv).T
            if np.all(np.isfinite(U)):
                return U, lam
        except np.linalg.LinAlgError:
            pass
    raise SparsekitError("the input Gram matrix stays singular after dampening")


def _group_mean(S: np.ndarray, b: int, a: int) -> np.ndarray:
    """Mean of S over a x b tiles (b rows, a columns; edge tiles partial): shape [G, C]."""
    M, n = S.shape
    G, C = -(-M // b), -(-n // a)
    pad = np.zeros((G * b, C * a))
    pad[:M, :n] = S
    cnt = np.zeros((G * b, C * a))
    cnt[:M, :n] = 1.0
    return pad.reshape(G, b, C, a).sum(axis=(1, 3)) / cnt.reshape(G, b, C, a).sum(axis=(1, 3))


def _expand(kept: np.ndarray, b: int, a: int, M: int, n: int) -> np.ndarray:
    return np.repeat(np.repeat(kept, b, axis=0), a, axis=1)[:M, :n]


class _Pattern:
    """The constraint the sweep selects masks under: column block boundaries and the selection."""

    def __init__(self, eff: Dict, sparsity: float, M: int, K: int):
        self.kind = eff["pattern"]
        self.M, self.K, self.s = M, K, sparsity
        if self.kind == "bank":
            self.a, self.b = 1, (eff["block"][1] if eff.get("block") else 1)
            self.block = eff["bank_size"]
            _, self.keep, self.keep_last = bank_keep_counts(K, self.block, sparsity)
        else:
            self.a, self.b = tuple(eff["block"]) if self.kind == "block" else (1, 1)
            self.block = -(-_SWEEP_BLOCK // self.a) * self.a
            self.groups, self.cols = -(-M // self.b), -(-K // self.a)
            self.total = keep_count(self.groups * self.cols, sparsity)

    def _share(self, c: int) -> int:
        return int(math.floor(self.total * c / self.cols + 0.5))

    def select(self, S: np.ndarray, i1: int) -> np.ndarray:
        """Mask (True = keep) for columns [i1, i1 + S.shape[1]) from their saliencies S[M, n]."""
        M, n = S.shape
        score = _group_mean(S, self.b, self.a)          # [G, C]
        if self.kind == "bank":
            keep = self.keep_last if i1 + n >= self.K else self.keep
            order = np.argsort(-score, axis=1, kind="stable")
            kept = np.zeros_like(score, dtype=bool)
            np.put_along_axis(kept, order[:, :keep], True, axis=1)
        else:
            c0, c1 = i1 // self.a, i1 // self.a + score.shape[1]
            quota = min(self._share(c1) - self._share(c0), score.size)
            kept = topk_flat(score.ravel(), quota).reshape(score.shape)
        return _expand(kept, self.b, self.a, M, n)


def reconstruct(W: np.ndarray, stats: LayerStats, eff: Dict, sparsity: float,
                damp: float = DEFAULT_DAMP, channel_correction: bool = False
                ) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """Prune ``W[M, K]`` under pattern ``eff`` ({"pattern", "bank_size", "block"} as prune
    reports it) at ``sparsity`` with the optimal-brain-surgeon sweep; return
    ``(new W float32, keep mask, info)``; ``info`` has the damping used, the bias shift
    ``bias_delta[M]`` that restores the mean output and the per-row ``scale[M]`` that
    ``channel_correction`` applied (ones without it)."""
    W0 = np.asarray(W, dtype=np.float64)
    M, K = W0.shape
    H = stats.gram.copy()
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0     # inputs that are always zero: any weight there is free to remove
    U, lam = _inverse_factor(H, damp)
    refit = stats.cross is not None and _refit_generalises(W0, stats, lam)
    target = _refit(W0, H, stats.cross, lam) if refit else W0
    Wk = target.copy()
    pattern = _Pattern(eff, sparsity, M, K)
    mask = np.zeros((M, K), dtype=bool)
    for i1 in range(0, K, pattern.block):
        i2 = min(K, i1 + pattern.block)
        W1 = Wk[:, i1:i2].copy()
        U1 = U[i1:i2, i1:i2]
        d = np.diag(U1)
        S = W1 ** 2 / (d ** 2)[None, :]
        S[:, dead[i1:i2]] = -1.0       # free to prune, ranked below every live weight
        m1 = pattern.select(S, i1)
        Err = np.zeros_like(W1)
        for j in range(i2 - i1):
            w = W1[:, j]
            err = np.where(m1[:, j], 0.0, w) / d[j]
            W1[:, j:] -= np.outer(err, U1[j, j:])
            W1[:, j] = np.where(m1[:, j], W1[:, j], 0.0)
            Err[:, j] = err
        Wk[:, i1:i2] = W1
        Wk[:, i2:] -= Err @ U[i1:i2, i2:]
        mask[:, i1:i2] = m1
    Wk[~mask] = 0.0
    scale = channel_scale(Wk, W0, stats) if channel_correction else np.ones(M)
    Wk *= scale[:, None]          # a positive factor per row: the zero pattern stays as it is
    mean_ref = stats.mean_dense if stats.mean_dense is not None else stats.mean
    bias_delta = mean_ref @ W0.T - stats.mean @ Wk.T
    return Wk.astype(np.float32), mask, {"damp": lam, "bias_delta": bias_delta, "scale": scale,
                                         "target": "dense" if refit else "layer"}


def channel_scale(W_new: np.ndarray, W: np.ndarray, stats: LayerStats) -> np.ndarray:
    """Per output channel, ``std(W x_ref) / std(W' x)`` on the calibration data (a Conv's over all
    pixels and samples), from the captured moments: ``Var(w x) = w (H - mu muᵀ) wᵀ``; clipped
    to CHANNEL_SCALE_RANGE, 1 where either output is constant."""
    dense = stats.gram_dense is not None
    var_new = _output_variance(W_new, stats.gram, stats.mean)
    var_ref = _output_variance(W, stats.gram_dense if dense else stats.gram,
                               stats.mean_dense if dense else stats.mean)
    flat = _FLAT_VARIANCE * max(float(np.mean(var_ref)), np.finfo(np.float64).tiny)
    live = (var_new > flat) & (var_ref > flat)
    ratio = np.sqrt(np.divide(var_ref, var_new, out=np.ones_like(var_ref), where=live))
    return np.clip(ratio, *CHANNEL_SCALE_RANGE)


def _output_variance(W: np.ndarray, gram: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``Var(w x)`` of each row ``w`` of ``W`` from ``H = E[x xᵀ]`` and ``E[x]``."""
    W = np.asarray(W, dtype=np.float64)
    return np.maximum(np.sum((W @ gram) * W, axis=1) - (W @ mean) ** 2, 0.0)


def _refit(W0: np.ndarray, H: np.ndarray, G: np.ndarray, lam: float) -> np.ndarray:
    """The weights that best map the inputs the layer now receives onto the dense output,
    ridge-regularised towards ``W0`` (more dampening: closer to ``W0``, never towards zero)."""
    scale = float(np.mean(np.diag(H)))
    ridge = lam * (scale if np.isfinite(scale) and scale > 0 else 1.0) * np.eye(H.shape[0])
    return np.linalg.solve(H + ridge, G @ W0.T + ridge @ W0.T).T


def _refit_generalises(W0: np.ndarray, stats: LayerStats, lam: float) -> bool:
    """Cross-validate the refit between the even and odd calibration batches: keep it only if,
    fitted on one half, it reproduces the dense output on the other better than ``W0`` does
    (both ways).  A classifier fed 256 samples for 1280 inputs fails this; conv layers, which
    see every pixel, pass.  With a single batch there is nothing to validate on: refit when
    there are at least DENSE_MIN_ROWS input vectors per input."""
    if stats.halves is None:
        return stats.rows >= DENSE_MIN_ROWS * W0.shape[1]
    for fit, val in (stats.halves, stats.halves[::-1]):
        W_fit = _refit(W0, fit.gram, fit.cross, lam)
        if layer_error(W_fit, W0, val) >= layer_error(W0, W0, val):
            return False
    return True


def layer_error(W_new: np.ndarray, W: np.ndarray, stats: LayerStats) -> float:
    """Relative output error ``E|W' x - W x_ref|² / E|W x_ref|²`` on the calibration data, bias
    aside; ``x`` the inputs the layer now receives, ``x_ref`` the dense model's (or ``x`` itself
    without dense statistics)."""
    Wn = np.asarray(W_new, dtype=np.float64)
    W0 = np.asarray(W, dtype=np.float64)
    dense = stats.cross is not None
    own = np.sum((Wn @ stats.gram) * Wn)       # tr(A H Bᵀ) as one GEMM (einsum is 20x slower)
    cross = np.sum((Wn @ (stats.cross if dense else stats.gram)) * W0)
    base = np.sum((W0 @ (stats.gram_dense if dense else stats.gram)) * W0)
    return float(max(own - 2 * cross + base, 0.0) / base) if base > 0 else 0.0


# --------------------------------------------------------------------------- the layer-by-layer driver

class LayerwiseReconstruction:
    """Used by :func:`sparsekit.prune.prune`: layer by layer in graph order, capture the inputs a
    layer receives from the already-pruned model (and, with match="dense", from the dense one),
    reconstruct, and move the mean output shift into the layer's bias."""

    def __init__(self, model: onnx.ModelProto, calibration, damp: float, match: str,
                 planned: List[Layer], consumers, channel_correction: bool = False):
        self.model = model                       # pruned in place by the caller as it goes
        self.dense = None
        if match == "dense":
            self.dense = onnx.ModelProto()
            self.dense.CopyFrom(model)
        self.calibration = calibration
        self.damp = damp
        self.channel_correction = channel_correction
        self.planned = planned
        self.consumers = consumers
        self.cache: Dict[str, LayerStats] = {}

    def _stats(self, layer: Layer) -> LayerStats:
        if layer.name not in self.cache:
            # siblings reading the same tensor get their statistics from the same pass: pruning
            # one of them cannot change what the others read
            x = layer.node.input[0]
            group = [c for c in self.planned if c.node.input[0] == x and c.name not in self.cache
                     and supports(c) is None and c.index >= layer.index]
            self.cache.update(capture_stats(self.model, group, self.calibration.batches, self.dense))
        return self.cache.pop(layer.name)

    def run(self, layer: Layer, W: np.ndarray, W_magnitude: np.ndarray, eff: Dict, sparsity: float,
            inits: Dict[str, onnx.TensorProto]
            ) -> Tuple[np.ndarray, Tuple[float, float], Optional[Tuple[float, float]], Optional[str]]:
        """The reconstructed weights, (magnitude error, reconstruction error), the (min, max)
        channel scale applied (None without channel correction), and a note."""
        stats = self._stats(layer)
        add_to_bias = self._bias_writer(layer, inits)
        no_bias = add_to_bias if isinstance(add_to_bias, str) else None
        # the correction is a scale and a shift: without a bias to take the shift, scaling a row
        # would move its mean as well
        correct = self.channel_correction and no_bias is None
        Wn, _, info = reconstruct(W, stats, eff, sparsity, self.damp, correct)
        errors = (layer_error(W_magnitude, W, stats), layer_error(Wn, W, stats))
        scale_range = (float(info["scale"].min()), float(info["scale"].max())) if correct else None
        if no_bias is None:
            add_to_bias(info["bias_delta"])
        notes = [f"no bias correction ({no_bias})" if no_bias else None]
        if no_bias and self.channel_correction:
            notes.append("no channel correction (it needs the bias correction)")
        if info["damp"] > self.damp * 1.0001:
            notes.append(f"input Gram matrix needed dampening {info['damp']:g}")
        upstream_changed = stats.cross is not None and not np.allclose(stats.cross, stats.gram, rtol=1e-6)
        if info["target"] == "layer" and upstream_changed:
            notes.append("no refit to the dense output (it did not hold up across calibration halves, "
                         "or too little data to check): "
                         "kept the layer's own output as target (match=layer)")
        return Wn, errors, scale_range, "; ".join(n for n in notes if n) or None

    def _bias_writer(self, layer: Layer, inits) -> Union[Callable[[np.ndarray], None], str]:
        """A function that adds an output shift ``delta[M]`` to the layer's bias, or why there is
        no bias it can go to."""
        node, g = layer.node, self.model.graph
        if layer.op == "Gemm":
            alpha, beta = float(get_attr(node, "alpha", 1.0)), float(get_attr(node, "beta", 1.0))
            if beta == 0.0:
                return "Gemm beta=0"
            factor, slot = alpha / beta, 2
        elif layer.op == "Conv":
            factor, slot = 1.0, 2
        else:   # MatMul: the bias is the constant vector of the Add that alone consumes its output
            users = self.consumers.get(layer.output, [])
            add = users[0][1] if len(users) == 1 else None
            if add is None or add.op_type != "Add":
                return "MatMul without a bias Add"
            bias = next((x for x in add.input if x in inits and x != layer.output), None)
            if bias is None or list(inits[bias].dims) not in ([layer.M], [1, layer.M]) \
                    or len(self.consumers.get(bias, [])) != 1:
                return "the Add's bias is not a constant [M] vector of its own"
            arr = np.asarray(onnx.numpy_helper.to_array(inits[bias]))
            return lambda delta: set_initializer(
                inits[bias], (arr + delta.reshape(arr.shape)).astype(arr.dtype))
        if len(node.input) > slot and node.input[slot]:
            name = node.input[slot]
            if name not in inits or len(self.consumers.get(name, [])) != 1:
                return "the bias is not a constant of this layer alone"
            arr = np.asarray(onnx.numpy_helper.to_array(inits[name]))
            if arr.size != layer.M or arr.dtype != np.float32:
                return "the bias is not a float vector of M values"
            return lambda delta: set_initializer(
                inits[name], (arr + factor * delta.reshape(arr.shape)).astype(np.float32))

        def new_bias(delta: np.ndarray) -> None:
            name = unique_name(f"{layer.weight}.bias_correction", all_names(g))
            g.initializer.append(onnx.numpy_helper.from_array((factor * delta).astype(np.float32), name))
            inits[name] = g.initializer[-1]
            while len(node.input) < slot:
                node.input.append("")
            if len(node.input) == slot:
                node.input.append(name)
            else:
                node.input[slot] = name
        return new_bias
