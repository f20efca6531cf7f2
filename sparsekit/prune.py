"""``sparsekit prune``: structured magnitude pruning of an ONNX model (plain ONNX in and out).

The output is the same graph with zeros in the pruned weights (and BatchNormalization folded
into the Conv before it), so it still runs in a stock onnxruntime; the recipe that produced it
is recorded as JSON under ``metadata_props["sparsekit.recipe"]`` for ``sparsekit convert``.
docs/prune.md describes the patterns, the layer selection, the recipe and metadata formats.

The steps live in their own modules: :mod:`sparsekit.fold_bn` (BatchNormalization folding),
:mod:`sparsekit.recipe` (settings, recipe and metadata formats), :mod:`sparsekit.selection`
(which layers, with which settings); this module makes one layer's mask (:func:`layer_mask`),
prunes the chosen layers and writes the report.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx

from .calibration import Calibration, load_calibration
from .errors import SparsekitError
from .fold_bn import fold_batchnorms
from .graph import (Layer, consumer_map, initializer_map, node_names, set_initializer,
                    tensor_to_array)
from .io import as_model
from .patterns import recorded_mask
from .permute import PermutedLayer, permute_rows
from .recipe import write_metadata
from .reconstruct import DEFAULT_DAMP, MATCH_MODES, LayerwiseReconstruction, supports
from .selection import (DEFAULT_MIN_PARAMS, Selection, SkippedLayer, layer_flops, resolve_pattern,
                        select_layers, selection_rules)
from .weights import read_weights

__all__ = ["prune", "layer_mask", "PruneReport", "LayerRow", "PruneTotals", "thin_rows_note"]


# --------------------------------------------------------------------------- report

@dataclass
class LayerRow:
    """One pruned layer (a node; a weight shared by several nodes is pruned once)."""

    name: str
    op: str
    weight: str
    weight_shape: List[int]
    matrix_shape: List[int]          # [M, K]
    pattern: str
    bank_size: Optional[int]
    block: Optional[List[int]]       # [a, b] or None
    requested: float                 # requested sparsity
    achieved: float                  # fraction of zero weights after pruning
    params: int
    nonzeros: int
    flops: Optional[int]             # 2·MACs of the dense layer, None if shapes are unknown
    flops_kept: Optional[int]        # flops · nonzeros / params
    shared_with: Optional[str] = None  # the layer that pruned this shared weight
    note: Optional[str] = None
    method: str = "magnitude"        # "magnitude" or "reconstruction" (--calibration)
    error_magnitude: Optional[float] = None  # relative layer output error of the magnitude mask
    error: Optional[float] = None    # ... of the weights written (calibration data only)
    channel_scale: Optional[List[float]] = None  # [min, max] row scale of channel_correction


@dataclass
class PruneTotals:
    """Totals over all candidate layers (weights shared by several nodes counted once)."""

    layers_pruned: int = 0
    layers_skipped: int = 0
    params: int = 0                  # weights of every candidate layer
    params_kept: int = 0             # params - params_removed
    params_removed: int = 0          # zero weights in the pruned layers
    params_removed_pct: float = 0.0  # 100 · params_removed / params
    params_pruned_layers: int = 0    # weights of the pruned layers
    nonzeros_pruned_layers: int = 0  # their nonzero weights after pruning
    flops: int = 0                   # dense 2·MACs, all candidate layers with known shapes
    flops_kept: int = 0              # pruned layers scaled by density, skipped layers dense
    flops_removed: int = 0
    flops_removed_pct: float = 0.0
    flops_unknown: int = 0           # candidate layers whose output shape could not be inferred


@dataclass
class PruneReport:
    """What :func:`prune` did: a row per pruned and per skipped layer, notes and totals."""

    layers: List[LayerRow] = field(default_factory=list)
    skipped: List[SkippedLayer] = field(default_factory=list)
    folded_bn: List[Dict[str, str]] = field(default_factory=list)  # {"conv":..., "bn":...}
    permuted: List[PermutedLayer] = field(default_factory=list)     # prune(permute=True)
    notes: List[str] = field(default_factory=list)
    settings: Dict[str, Any] = field(default_factory=dict)
    totals: PruneTotals = field(default_factory=PruneTotals)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-serialisable dict: {settings, layers, skipped, folded_bn, notes, totals}."""
        return {
            "settings": dict(self.settings),
            "layers": [asdict(r) for r in self.layers],
            "skipped": [asdict(s) for s in self.skipped],
            "folded_bn": [dict(f) for f in self.folded_bn],
            "permuted": [asdict(p) for p in self.permuted],
            "notes": list(self.notes),
            "totals": asdict(self.totals),
        }


# --------------------------------------------------------------------------- pruning

def prune(model_or_path, pattern: str = "block", sparsity: float = 0.9, *,
          bank_size: Optional[int] = None, banks: Optional[int] = None, block=None,
          include=None, exclude=None, min_params: int = DEFAULT_MIN_PARAMS, skip_first: bool = True,
          skip_depthwise: bool = True, recipe=None, fold_bn: bool = True,
          calibration=None, damp: float = DEFAULT_DAMP, match: str = "dense",
          channel_correction: Optional[bool] = None, permute: bool = False,
          progress: Optional[Callable[[int, int, str], None]] = None,
          ) -> Tuple[onnx.ModelProto, PruneReport]:
    """Prune a model's Conv / Gemm / MatMul weights; return ``(pruned copy, report)``.

    ``pattern``: "bank" (bank-balanced; ``bank_size`` or ``banks``, default min(64, K);
    ``block="1xB"`` makes it 1xB blocks balanced per bank), "block" (layer-wise blocks,
    ``block`` default "1x4") or "unstructured".  ``sparsity`` in [0, 1).  ``block=None`` means
    the pattern's default (1x4 for "block", single rows for "bank").  ``include``/``exclude``:
    a regex or list of regexes searched (``re.search``) in the layer names.  ``recipe``: path or
    dict, see docs/prune.md; its settings override the keyword arguments.  The input model is
    never modified.  ``progress(done, total, name)`` is called after each pruned layer.

    ``calibration`` (a :class:`~sparsekit.calibration.Calibration`, or a path to an .npz of
    input samples) switches from magnitude pruning to one-shot reconstruction
    (:mod:`sparsekit.reconstruct`): masks chosen by second-order saliency and kept weights
    updated layer by layer, in graph order, with ``damp`` and ``match`` as documented there.
    ``channel_correction`` (with ``calibration``) scales each reconstructed output channel's
    weight row so its output spread matches the reference's; None: only with ``match="layer"``.
    ``permute``: before pruning, reorder the output channels of layers pruned in blocks of
    several rows (1x4) so rows that need the same inputs share a block (:mod:`sparsekit.permute`;
    the function is unchanged, only initializer values move).
    """
    # ---- validate everything cheap before touching the model
    rules = selection_rules(pattern, sparsity, bank_size=bank_size, banks=banks, block=block,
                            include=include, exclude=exclude, min_params=min_params,
                            skip_first=skip_first, skip_depthwise=skip_depthwise, recipe=recipe)
    _check_reconstruction_options(calibration, damp, match, channel_correction)

    src = as_model(model_or_path)
    # a copy with weights in any encoding (Constant nodes, Cast, Transpose, ...) as initializers
    model, weight_notes = read_weights(src)
    report = PruneReport()
    report.notes.extend(weight_notes)
    report.settings = {
        "pattern": pattern, "sparsity": float(sparsity), "bank_size": bank_size, "banks": banks,
        "block": list(rules.keyword_spec["block"]) if rules.keyword_spec.get("block") else None,
        "include": [r.pattern for r in rules.names.include],
        "exclude": [r.pattern for r in rules.names.exclude],
        "min_params": rules.min_params, "skip_first": rules.skip_first,
        "skip_depthwise": rules.skip_depthwise, "fold_bn": bool(fold_bn),
        "recipe": (str(recipe) if isinstance(recipe, (str, os.PathLike))
                   else ("<dict>" if recipe is not None else None)),
    }
    calib = None
    if calibration is not None:
        calib = calibration if isinstance(calibration, Calibration) else load_calibration(calibration, src)
        if channel_correction is None:
            # measured (docs/accuracy.md): with match="layer" the correction helps much (nothing
            # else restores a layer's shrunken spread); with "dense", whose refits to the dense
            # outputs already take up upstream errors, it helped and hurt about as often
            channel_correction = match == "layer"
        report.settings.update(calibration=calib.source or "<arrays>", calibration_samples=calib.samples,
                               damp=float(damp), match=match, channel_correction=bool(channel_correction))

    names = node_names(model.graph)
    if fold_bn:
        report.folded_bn, fold_notes = fold_batchnorms(model, names)
        report.notes.extend(fold_notes)
        names = node_names(model.graph)  # same names for the nodes that remain (per-op-type numbering)
    selection = select_layers(model, rules, names)
    if permute:
        report.permuted, permute_notes = permute_rows(model, _row_groups(selection))
        report.notes.extend(permute_notes)
    report.settings["permute"] = bool(permute)
    recon = (LayerwiseReconstruction(model, calib, damp, match, [c for c, _ in selection.chosen],
                                     consumer_map(model.graph), bool(channel_correction))
             if calib else None)
    report.layers = _prune_chosen(model, selection, names, recon, report.notes, progress)
    report.skipped = list(selection.listed)
    _note_skipped_sharers(selection, report)
    report.totals = _totals(selection.candidates, report)
    write_metadata(model, _metadata_entries(report.layers), [c.name for c in selection.candidates],
                   report.notes)
    return model, report


def _row_groups(selection: Selection) -> List[Tuple[Layer, Tuple[int, int], float]]:
    """(layer, block [A columns, B rows], sparsity) for each chosen layer pruned in blocks."""
    out = []
    for c, spec in selection.chosen:
        used = resolve_pattern(c, spec)
        if used["pattern"] == "block":
            out.append((c, (int(used["block"][0]), int(used["block"][1])), float(spec["sparsity"])))
    return out


def layer_mask(layer: Layer, W: np.ndarray, spec: Dict[str, Any]) -> Tuple[np.ndarray, Dict[str, Any]]:
    """The magnitude mask of ``layer``'s weight matrix ``W`` ([M, K], True = keep) under the
    settings ``spec`` (pattern, sparsity, bank_size/banks, block), and the pattern it used
    (:func:`sparsekit.selection.resolve_pattern`)."""
    used = resolve_pattern(layer, spec)
    return recorded_mask(W, used["pattern"], spec["sparsity"], used["bank_size"], used["block"]), used


def _check_reconstruction_options(calibration, damp, match, channel_correction) -> None:
    if match not in MATCH_MODES:
        raise SparsekitError(f"match must be one of {', '.join(MATCH_MODES)}, got {match!r}")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not (0.0 <= damp < 1e3):
        raise SparsekitError(f"damp must be a non-negative number, got {damp!r}")
    if channel_correction not in (None, True, False):
        raise SparsekitError(f"channel_correction must be True or False, got {channel_correction!r}")
    if channel_correction and calibration is None:
        raise SparsekitError("channel_correction needs calibration data (it matches the dense "
                             "model's output statistics on it)")


def _prune_chosen(model: onnx.ModelProto, selection: Selection, names: List[str],
                  recon: Optional[LayerwiseReconstruction], notes: List[str],
                  progress: Optional[Callable[[int, int, str], None]]) -> List[LayerRow]:
    """Prune the chosen layers in graph order, in place; their report rows in that order."""
    inits = initializer_map(model.graph)
    consumers = consumer_map(model.graph)
    pruned_by: Dict[str, LayerRow] = {}      # weight name -> row of the layer that pruned it
    layer_of: Dict[str, Layer] = {}
    rows: List[LayerRow] = []
    total = len(selection.chosen)
    for done, (c, spec) in enumerate(selection.chosen, start=1):
        layer_of[c.name] = c
        first = pruned_by.get(c.weight)
        if first is None:
            row = _prune_layer(c, spec, inits, recon, selection.shapes, notes)
            others = [names[k] for k, _ in consumers.get(c.weight, []) if k != c.index]
            if others:
                row.note = (f"weight shared with {', '.join(others)}: pruned once, "
                            "they see the pruned values")
                notes.append(f"{c.name}: {row.note}")
            pruned_by[c.weight] = row
            thin = thin_rows_note(row)
            if thin:
                row.note = f"{row.note}; {thin}" if row.note else thin
                notes.append(f"{c.name}: {thin}")
        else:
            row = _shared_row(c, spec, inits[c.weight], first, layer_of[first.name], selection.shapes)
        rows.append(row)
        if progress is not None:
            progress(done, total, c.name)
    return rows


def thin_rows_note(row: LayerRow) -> Optional[str]:
    """The warning for a layer that keeps fewer weights than it has output rows (some rows are
    then all zero: those outputs no longer depend on the input), or None."""
    M = row.matrix_shape[0]
    if row.shared_with is not None or row.nonzeros >= M:
        return None
    return (f"keeps {row.nonzeros} weight(s) for {M} output rows, fewer than one per row: at "
            f"least {M - row.nonzeros} outputs no longer depend on the input")


def _note_skipped_sharers(selection: Selection, report: PruneReport) -> None:
    """A skipped layer whose weight a pruned layer shares sees the pruned values: say so."""
    pruned_by = {r.weight: r.name for r in report.layers if r.shared_with is None}
    for s in selection.skipped:
        if s.weight in pruned_by:
            report.notes.append(f"{s.name}: skipped ({s.reason}), but it reads weight "
                                f"{s.weight!r}, which {pruned_by[s.weight]} pruned: it sees "
                                "the pruned values")


def _prune_layer(c: Layer, spec, inits, recon: Optional[LayerwiseReconstruction], shapes,
                 notes: List[str]) -> LayerRow:
    """Mask (and with calibration data reconstruct) one layer's weight in place; its row."""
    t = inits[c.weight]
    W = c.tensor_matrix(t)
    mask, used = layer_mask(c, W, spec)
    Wp = np.where(mask, W, np.zeros((), dtype=W.dtype))
    del mask
    why_not = supports(c) if recon else None
    if recon and why_not is None:
        Wp, errors, scale_range, note = recon.run(c, W, Wp, used, spec["sparsity"], inits)
    set_initializer(t, c.from_matrix(Wp, copy=False).astype(W.dtype, copy=False))
    row = _row(c, used, spec["sparsity"], int(np.count_nonzero(Wp)), shapes)
    if recon and why_not is None:
        row.method = "reconstruction"
        row.error_magnitude, row.error = errors
        row.channel_scale = list(scale_range) if scale_range else None
        if note:
            row.note = note
            notes.append(f"{c.name}: {note}")
    elif recon:
        row.note = why_not
        notes.append(f"{c.name}: {why_not}")
    return row


def _shared_row(c: Layer, spec, t: onnx.TensorProto, first: LayerRow, first_layer: Layer,
                shapes) -> LayerRow:
    """The row of a layer whose weight an earlier layer (``first``) pruned."""
    nnz = int(np.count_nonzero(c.to_matrix(tensor_to_array(t))))
    # the first layer's pattern holds for this one only if it sees the same [M, K] matrix
    same_view = (first_layer.transposed == c.transposed and first.matrix_shape == [c.M, c.K])
    used = ({"pattern": first.pattern, "bank_size": first.bank_size, "block": first.block}
            if same_view else {"pattern": "unstructured", "bank_size": None, "block": None})
    row = _row(c, used, spec["sparsity"], nnz, shapes)
    row.shared_with = first.name
    row.note = f"shares weight {c.weight!r} with {first.name}, which pruned it"
    return row


def _row(c: Layer, used, requested: float, nnz: int, shapes) -> LayerRow:
    fl = layer_flops(c, shapes)
    params = c.params
    return LayerRow(
        name=c.name, op=c.op, weight=c.weight, weight_shape=list(c.weight_shape),
        matrix_shape=[c.M, c.K], pattern=used["pattern"], bank_size=used["bank_size"],
        block=used["block"], requested=float(requested),
        achieved=1.0 - nnz / params if params else 0.0, params=params, nonzeros=nnz,
        flops=fl, flops_kept=None if fl is None else int(round(fl * nnz / params)))


def _totals(candidates: List[Layer], report: PruneReport) -> PruneTotals:
    t = PruneTotals(layers_pruned=len(report.layers), layers_skipped=len(report.skipped))
    names = {c.name for c in candidates}
    seen: set = set()
    for c in candidates:
        if c.weight not in seen:
            seen.add(c.weight)
            t.params += c.params
    for r in report.layers:
        if r.shared_with is None:
            t.params_pruned_layers += r.params
            t.nonzeros_pruned_layers += r.nonzeros
        if r.flops is None:
            t.flops_unknown += 1
        else:
            t.flops += r.flops
            t.flops_kept += r.flops_kept
    for s in report.skipped:
        if s.name not in names:
            continue    # refused (weights.py): not a candidate, its FLOPs are not counted
        if s.flops is None:
            t.flops_unknown += 1
        else:
            t.flops += s.flops
            t.flops_kept += s.flops
    t.params_removed = t.params_pruned_layers - t.nonzeros_pruned_layers
    t.params_kept = t.params - t.params_removed
    t.params_removed_pct = 100.0 * t.params_removed / t.params if t.params else 0.0
    t.flops_removed = t.flops - t.flops_kept
    t.flops_removed_pct = 100.0 * t.flops_removed / t.flops if t.flops else 0.0
    return t


def _metadata_entries(rows: List[LayerRow]) -> Dict[str, Dict[str, Any]]:
    """The metadata recipe entries of the pruned layers (docs/prune.md, "Metadata")."""
    return {r.name: {"op": r.op, "weight": r.weight, "pattern": r.pattern,
                     "sparsity": r.requested, "achieved": round(r.achieved, 6),
                     "bank_size": r.bank_size, "block": r.block} for r in rows}


# No longer used here (fold_bn uses graph.drop_unused_initializers); left for the issue-18 move.
