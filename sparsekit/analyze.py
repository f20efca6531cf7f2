"""``sparsekit analyze``: per-layer sensitivity to pruning, and per-layer sparsities for a global target.

1. Sensitivity: every layer ``prune`` would select is pruned alone at each sparsity of a grid (by
   reconstruction from the calibration data, or by magnitude) and the whole model's outputs on
   the calibration data are compared with the dense model's: the error is
   ``sum |y - y_dense|² / sum |y_dense|²`` over all outputs.  One onnxruntime session serves
   every trial: the pruned weights are fed as overriding initializers.
2. Allocation: each layer's error curve is replaced by its lower convex hull through (0, 0), so
   removing weights has a rising marginal cost; the segments with the least error per removed
   parameter (or FLOP) are taken first until the target is met exactly, the last one partly.
   Summed per-layer errors are the prediction (errors of different layers add up to first order).
3. The result is a recipe that ``sparsekit prune --recipe`` takes (the default sparsity is 0, so
   only the listed layers are pruned).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from .calibration import Calibration, load_calibration
from .errors import SparsekitError
from .fold_bn import fold_batchnorms
from .graph import initializer_map, tensor_to_array
from .io import as_model
from .prune import layer_mask
from .recipe import RECIPE_VERSION
from .reconstruct import DEFAULT_DAMP, capture_stats, reconstruct, supports
from .selection import (DEFAULT_MIN_PARAMS, layer_flops, resolve_pattern, select_layers,
                        selection_rules)
from .sequence import RECURRENT_OPS
from .sessions import session
from .weights import read_weights

__all__ = ["analyze", "allocate", "AnalyzeReport", "LayerSensitivity", "DEFAULT_GRID", "COST_UNITS",
           "METHODS"]

DEFAULT_GRID = (0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
COST_UNITS = ("params", "flops")
METHODS = ("reconstruction", "magnitude")


@dataclass
class LayerSensitivity:
    name: str
    op: str
    params: int
    flops: Optional[int]
    errors: List[float]              # model output error at each grid sparsity, this layer alone
    method: str                      # how the layer was pruned for the trial
    sparsity: float = 0.0            # allocated
    predicted_error: float = 0.0     # its hull's error at the allocated sparsity


@dataclass
class AnalyzeReport:
    grid: List[float]
    target: float
    by: str
    layers: List[LayerSensitivity] = field(default_factory=list)
    settings: Dict[str, Any] = field(default_factory=dict)
    achieved: float = 0.0            # allocated sparsity over the analysed layers, counted ``by``
    achieved_counts: float = 0.0     # the same after prune rounds keep counts (per bank or layer)
    predicted_error: float = 0.0     # sum of the layers' predicted errors
    notes: List[str] = field(default_factory=list)

    def recipe(self) -> Dict[str, Any]:
        """The recipe for ``prune --recipe``: the pattern as default, every layer's sparsity."""
        default = {k: v for k, v in self.settings.get("pattern_spec", {}).items() if v is not None}
        default["sparsity"] = 0.0
        return {"version": RECIPE_VERSION, "default": default,
                "layers": {r.name: {"sparsity": round(r.sparsity, 6)} for r in self.layers}}

    def to_dict(self) -> Dict[str, Any]:
        return {"grid": self.grid, "target": self.target, "by": self.by,
                "achieved": self.achieved, "achieved_counts": self.achieved_counts,
                "predicted_error": self.predicted_error,
                "settings": self.settings, "notes": self.notes,
                "layers": [asdict(r) for r in self.layers], "recipe": self.recipe()}


# --------------------------------------------------------------------------- allocation

def _lower_hull(xs: Sequence[float], ys: Sequence[float]) -> List[Tuple[float, float]]:
    """Lower convex hull of points sorted by x (monotone chain)."""
    hull: List[Tuple[float, float]] = []
    for p in zip(xs, ys):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:   # not a left turn
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def allocate(costs: Sequence[float], grid: Sequence[float], errors: Sequence[Sequence[float]],
             target: float) -> Tuple[List[float], List[float]]:
    """Per-layer sparsities with ``sum(c·s) = target·sum(c)`` and the least summed error.

    ``errors[l][g]`` is layer l's error at ``grid[g]`` (0 at sparsity 0).  Returns the
    sparsities and each layer's predicted error (on its convex hull).
    """
    costs = np.asarray(costs, dtype=np.float64)
    if not 0.0 <= target <= max(grid):
        raise SparsekitError(f"target {target} is outside [0, {max(grid)}] (the largest analysed sparsity)")
    hulls = [_lower_hull([0.0] + list(grid), [0.0] + [max(float(e), 0.0) for e in errs]) for errs in errors]
    segs = []
    for li, h in enumerate(hulls):
        for (x1, y1), (x2, y2) in zip(h, h[1:]):
            per_cost = (y2 - y1) / (costs[li] * (x2 - x1)) if costs[li] > 0 else 0.0
            segs.append((per_cost, li, x1, x2))
    segs.sort(key=lambda t: t[0])      # convex hulls: each layer's segments stay in order
    need = target * float(costs.sum())
    tol = 1e-12 * float(costs.sum())
    alloc = np.zeros(len(costs))
    for _, li, x1, x2 in segs:
        if need <= tol:     # rounding leftovers must not open the next segment
            break
        gain = costs[li] * (x2 - x1)
        take = min(1.0, need / gain) if gain > 0 else 1.0
        alloc[li] = x1 + take * (x2 - x1)
        need -= take * gain
    predicted = [float(np.interp(s, [p[0] for p in h], [p[1] for p in h])) for s, h in zip(alloc, hulls)]
    return [float(s) for s in alloc], predicted


# --------------------------------------------------------------------------- sensitivity

class _OutputProbe:
    """One session of the dense model whose selected weights can be overridden per run."""

    def __init__(self, model: onnx.ModelProto, weights: List[str], feeds: List[Dict[str, np.ndarray]]):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        inits = initializer_map(m)
        for w in weights:     # an initializer that is also a graph input can be fed at run time
            t = inits[w]
            m.graph.input.append(onnx.helper.make_tensor_value_info(w, t.data_type, list(t.dims)))
        self.sess = session(m, custom_ops=False, log_severity_level=3)   # dense: stock onnxruntime
        self.feeds = feeds
        self.reference = [self._outputs(f) for f in feeds]
        self.scale = sum(float(np.sum(y ** 2)) for ys in self.reference for y in ys) or 1.0

    def _outputs(self, feed):
        return [np.asarray(y, dtype=np.float64) for y in self.sess.run(None, feed)]

    def error(self, weight: str, value: np.ndarray) -> float:
        tot = 0.0
        for feed, ref in zip(self.feeds, self.reference):
            ys = self._outputs({**feed, weight: value})
            tot += sum(float(np.sum((y - r) ** 2)) for y, r in zip(ys, ref))
        return tot / self.scale


def analyze(model_or_path, calibration, target: float, *, by: str = "params", pattern: str = "block",
            bank_size: Optional[int] = None, banks: Optional[int] = None, block=None, include=None,
            exclude=None, min_params: int = DEFAULT_MIN_PARAMS, skip_first: bool = True,
            skip_depthwise: bool = True,
            fold_bn: bool = True, grid: Sequence[float] = DEFAULT_GRID, method: str = "reconstruction",
            samples: Optional[int] = 64, damp: float = DEFAULT_DAMP,
            progress: Optional[Callable[[int, int, str], None]] = None) -> AnalyzeReport:
    """Sensitivity of every selected layer and an allocation reaching ``target`` (see module doc).

    ``calibration``: a :class:`~sparsekit.calibration.Calibration` or an .npz path.  The layer
    selection and pattern options are those of :func:`sparsekit.prune.prune`.  ``samples``:
    how many calibration samples the output comparisons use (all of them feed the Gram
    matrices).
    """
    if by not in COST_UNITS:
        raise SparsekitError(f"by must be one of {', '.join(COST_UNITS)}, got {by!r}")
    if method not in METHODS:
        raise SparsekitError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    grid = sorted({float(g) for g in grid})
    if not grid or grid[0] <= 0.0 or grid[-1] >= 1.0:
        raise SparsekitError(f"grid sparsities must be in (0, 1), got {grid}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target < 1.0:
        raise SparsekitError(f"target must be a sparsity in (0, 1), got {target!r}")
    if target > grid[-1]:
        raise SparsekitError(f"target {target} is above the largest grid sparsity {grid[-1]}")
    src = as_model(model_or_path)
    # prune's own selection (at the largest grid sparsity: none of the layers is at 0)
    rules = selection_rules(pattern, grid[-1], bank_size=bank_size, banks=banks, block=block,
                            include=include, exclude=exclude, min_params=min_params,
                            skip_first=skip_first, skip_depthwise=skip_depthwise)
    model, _ = read_weights(src)     # prune's path: weights in any encoding as initializers
    if fold_bn:
        fold_batchnorms(model)
    selection = select_layers(model, rules)
    analysed = _analysed_layers(selection.chosen)     # (layer, its settings) pairs
    layers = [c for c, _ in analysed]
    if not layers:
        raise SparsekitError("no layer to analyse after selection")
    calib = calibration if isinstance(calibration, Calibration) else load_calibration(calibration, src)
    report = AnalyzeReport(grid=grid, target=float(target), by=by)
    report.settings = {"pattern_spec": {"pattern": pattern, "bank_size": bank_size, "banks": banks,
                                        "block": block if isinstance(block, (str, type(None))) else
                                        f"{block[0]}x{block[1]}"},
                       "method": method, "calibration": calib.source, "samples": calib.samples,
                       "probe_samples": min(samples or calib.samples, calib.samples), "damp": damp}
    probe_cal = calib.subset(samples) if samples else calib
    # fit on other samples than the probe's when there are enough, or a refit that follows its
    # calibration set would look better than it is
    fit_cal = calib.rest(probe_cal.samples) if calib.samples >= 2 * probe_cal.samples else calib
    if fit_cal is calib:
        report.notes.append(f"{calib.samples} calibration samples: the {probe_cal.samples} probe samples "
                            "are also fitted (give at least twice --samples to keep them apart)")
    report.settings["fit_samples"] = fit_cal.samples
    stats = {}
    if method == "reconstruction":
        stats = capture_stats(model, [c for c in layers if supports(c) is None], fit_cal.batches)
    probe = _OutputProbe(model, [c.weight for c in layers], list(probe_cal.batches()))
    inits = initializer_map(model)
    for done, (c, spec) in enumerate(analysed, start=1):
        used = resolve_pattern(c, spec)
        W = c.to_matrix(tensor_to_array(inits[c.weight]))
        errs = []
        for s in grid:
            if c.name in stats:
                Wn, _, _ = reconstruct(W, stats[c.name], used, s, damp)
            else:
                mask, _ = layer_mask(c, W, {**spec, "sparsity": s})
                Wn = np.where(mask, W, 0.0).astype(W.dtype)
            errs.append(probe.error(c.weight, c.from_matrix(Wn).astype(W.dtype)))
        flops = layer_flops(c, selection.shapes)
        if by == "flops" and flops is None:
            raise SparsekitError(f"{c.name}: FLOPs unknown (shape inference failed); use --by params")
        report.layers.append(LayerSensitivity(c.name, c.op, c.params, flops, errs,
                                              "reconstruction" if c.name in stats else "magnitude"))
        if progress is not None:
            progress(done, len(layers), c.name)
    costs = [(ls.params if by == "params" else ls.flops) for ls in report.layers]
    alloc, predicted = allocate(costs, grid, [ls.errors for ls in report.layers], target)
    for ls, s, e in zip(report.layers, alloc, predicted):
        ls.sparsity, ls.predicted_error = s, e
    report.achieved = float(np.dot(costs, alloc) / np.sum(costs))
    report.predicted_error = float(sum(predicted))
    # what prune will actually remove: keep counts are whole weights per bank / per layer
    removed = [_removed_fraction(c, spec, inits[c.weight], ls.sparsity)
               for (c, spec), ls in zip(analysed, report.layers)]
    report.achieved_counts = float(np.dot(costs, removed) / np.sum(costs))
    return report


def _analysed_layers(chosen):
    """The chosen layers analyze measures: each weight once, by the first layer that prunes it
    (as prune does), and no LSTM/GRU W or R (analyze measures Conv, Gemm and MatMul layers)."""
    first_of_weight = {}
    for c, _ in chosen:
        first_of_weight.setdefault(c.weight, c.name)
    return [(c, spec) for c, spec in chosen
            if first_of_weight[c.weight] == c.name and c.op not in RECURRENT_OPS]


def _removed_fraction(layer, spec, tensor, sparsity: float) -> float:
    """The fraction of zero weights prune leaves in ``layer`` for an allocated ``sparsity``
    (rounded as in the recipe; a listed layer at sparsity 0 stays dense)."""
    requested = round(sparsity, 6)
    if requested == 0.0 or not layer.params:
        return 0.0
    W = layer.to_matrix(tensor_to_array(tensor))
    mask, _ = layer_mask(layer, W, {**spec, "sparsity": requested})
    kept = int(np.count_nonzero(np.where(mask, W, np.zeros((), dtype=W.dtype))))
    return 1.0 - kept / layer.params
