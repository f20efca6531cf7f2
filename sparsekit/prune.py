"""``sparsekit prune``: structured magnitude pruning of an ONNX model (plain ONNX in and out).

The output is the same graph with zeros in the pruned weights (and BatchNormalization folded
into the Conv before it), so it still runs in a stock onnxruntime; the recipe that produced it
is recorded as JSON under ``metadata_props["sparsekit.recipe"]`` for ``sparsekit convert``.
docs/prune.md describes the patterns, the layer selection, the recipe and metadata formats.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import SparsekitError
from .graph import (Layer, all_names, consumer_map, get_attr, infer_shapes, initializer_map, node_names,
                    prunable_layers, set_initializer, subgraph_references, tensor_to_array, unique_name)
from .io import as_model
from .patterns import (_positive_int, bank_mask, block_mask, parse_block, resolve_bank_size,
                       unstructured_mask)
from .reconstruct import DEFAULT_DAMP, MATCH_MODES, LayerwiseReconstruction, supports
from .sequence import LSTM_DEFAULT_BANK, RECURRENT_OPS

__all__ = ["prune", "PruneReport", "LayerRow", "SkippedLayer", "PruneTotals", "load_recipe",
           "fold_batchnorms", "PATTERNS", "DEFAULT_BANK_SIZE", "METADATA_KEY"]

PATTERNS = ("bank", "block", "unstructured")
DEFAULT_BANK_SIZE = 64          # bank pattern without bank_size/banks: min(64, K)
DEFAULT_BLOCK = (1, 4)          # block pattern when no block is given
METADATA_KEY = "sparsekit.recipe"
RECIPE_VERSION = 1

_SPEC_KEYS = ("pattern", "sparsity", "bank_size", "banks", "block")
# Keys of the metadata entries, accepted (and ignored) in recipe layer entries so that the
# recipe stored in a pruned model can be fed back as a recipe.
_INFO_KEYS = ("op", "weight", "achieved")
_FIRST_CONV_MAX_CHANNELS = 4


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
class SkippedLayer:
    """A Conv / Gemm / MatMul with a constant weight that was left dense, and why."""

    name: str
    op: str
    weight: str
    weight_shape: List[int]
    reason: str
    params: int
    flops: Optional[int]             # dense 2·MACs (the layer stays dense)


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
    layers: List[LayerRow] = field(default_factory=list)
    skipped: List[SkippedLayer] = field(default_factory=list)
    folded_bn: List[Dict[str, str]] = field(default_factory=list)  # {"conv":..., "bn":...}
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
            "notes": list(self.notes),
            "totals": asdict(self.totals),
        }


# --------------------------------------------------------------------------- settings

def _check_prune_sparsity(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise SparsekitError(f"{where}sparsity must be a number in [0, 1), got {v!r}")
    s = float(v)
    if not (0.0 <= s < 1.0):
        raise SparsekitError(f"{where}sparsity must be in [0, 1), got {v!r}")
    return s


def _check_spec(d: Dict[str, Any], where: str, allow_info: bool) -> Dict[str, Any]:
    """Validate one settings dict (recipe default / layer entry / keyword args); normalise it."""
    if not isinstance(d, dict):
        raise SparsekitError(f"{where}expected a mapping of settings, got {type(d).__name__}")
    allowed = _SPEC_KEYS + (_INFO_KEYS if allow_info else ())
    for k in d:
        if k not in allowed:
            raise SparsekitError(
                f"{where}unknown key {k!r} (expected {', '.join(_SPEC_KEYS)})")
    out: Dict[str, Any] = {}
    if "pattern" in d:
        if d["pattern"] not in PATTERNS:
            raise SparsekitError(
                f"{where}unknown pattern {d['pattern']!r} (expected {', '.join(PATTERNS)})")
        out["pattern"] = d["pattern"]
    if "sparsity" in d:
        out["sparsity"] = _check_prune_sparsity(d["sparsity"], where)
    bs, nb = d.get("bank_size"), d.get("banks")
    if bs is not None and nb is not None:
        raise SparsekitError(f"{where}give bank_size or banks, not both")
    if bs is not None:
        out["bank_size"] = _positive_int(bs, f"{where}bank_size")
    if nb is not None:
        out["banks"] = _positive_int(nb, f"{where}banks")
    if "block" in d:
        out["block"] = None if d["block"] is None else _parse_block(d["block"], where)
    return out


def _parse_block(b, where: str) -> Tuple[int, int]:
    try:
        return parse_block(b)
    except SparsekitError as e:
        raise SparsekitError(f"{where}{e}") from None


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    if "bank_size" in over:
        out.pop("banks", None)
    if "banks" in over:
        out.pop("bank_size", None)
    out.update(over)
    return out


def _compile_regexes(v, what: str) -> List[re.Pattern]:
    if v is None:
        return []
    items = [v] if isinstance(v, str) else list(v)
    out = []
    for x in items:
        if not isinstance(x, str):
            raise SparsekitError(f"{what} must be a regular expression string, got {x!r}")
        try:
            out.append(re.compile(x))
        except re.error as e:
            raise SparsekitError(f"bad {what} regex {x!r}: {e}") from None
    return out


def load_recipe(recipe) -> Optional[Dict[str, Any]]:
    """Read and validate a recipe (path to YAML/JSON, or a dict).

    Returns ``{"default": {...}, "layers": {key: {...}}}`` with validated, normalised settings.
    A bare number as a layer entry is short for ``{"sparsity": number}``.
    """
    if recipe is None:
        return None
    if isinstance(recipe, (str, os.PathLike)):
        p = Path(recipe)
        if not p.is_file():
            raise SparsekitError(f"{p}: no such recipe file")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise SparsekitError(f"{p}: could not read recipe ({e})") from None
        try:
            if p.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml  # YAML also reads JSON
                data = yaml.safe_load(text)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SparsekitError(f"{p}: not a valid recipe file ({first})") from None
        where = f"recipe {p.name}: "
    elif isinstance(recipe, dict):
        data = recipe
        where = "recipe: "
    else:
        raise SparsekitError(f"recipe must be a path or a dict, got {type(recipe).__name__}")
    if not isinstance(data, dict):
        raise SparsekitError(f"{where}expected a mapping with 'default' and/or 'layers'")
    for k in data:
        if k not in ("version", "default", "layers"):
            raise SparsekitError(f"{where}unknown key {k!r} (expected default, layers)")
    if "version" in data and data["version"] != RECIPE_VERSION:
        raise SparsekitError(f"{where}unsupported version {data['version']!r} (expected 1)")
    default = _check_spec(data.get("default") or {}, f"{where}default: ", allow_info=False)
    layers_in = data.get("layers") or {}
    if not isinstance(layers_in, dict):
        raise SparsekitError(f"{where}'layers' must map layer names (or regexes) to settings")
    layers: Dict[str, Dict[str, Any]] = {}
    for key, val in layers_in.items():
        if not isinstance(key, str) or not key:
            raise SparsekitError(f"{where}layer keys must be non-empty strings, got {key!r}")
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            val = {"sparsity": val}
        layers[key] = _check_spec(val if val is not None else {}, f"{where}layer {key!r}: ",
                                  allow_info=True)
    return {"default": default, "layers": layers}


def _key_matches(key: str, name: str) -> bool:
    if key == name:
        return True
    try:
        return re.fullmatch(key, name) is not None
    except re.error:
        return False


# --------------------------------------------------------------------------- BN folding

def fold_batchnorms(model: onnx.ModelProto, names: Optional[List[str]] = None
                    ) -> Tuple[List[Dict[str, str]], List[str]]:
    """Fold every inference-mode BatchNormalization that is a Conv's only consumer, in place.

    ``W' = W · s`` and ``b' = (b - mean) · s + B`` per output channel with
    ``s = scale / sqrt(var + epsilon)``; the BN node is removed and the Conv now writes the BN's
    output tensor (so graph outputs and downstream names are unchanged).  Returns the folded
    ``{"conv", "bn"}`` pairs (display names) and notes on pairs that were not folded.
    """
    g = model.graph
    names = names or node_names(g)
    inits = initializer_map(g)
    cons = consumer_map(g)
    graph_outputs = {o.name for o in g.output}
    taken = all_names(g)
    remove: set = set()
    bn_params: set = set()
    folded: List[Dict[str, str]] = []
    notes: List[str] = []
    for i, n in enumerate(g.node):
        if n.op_type != "Conv" or n.domain not in ("", "ai.onnx") or len(n.input) < 2:
            continue
        y = n.output[0] if n.output else ""
        users = cons.get(y, [])
        if not y or y in graph_outputs or len(users) != 1:
            continue
        j, bn = users[0]
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            continue
        why = _fold_obstacle(n, bn, y, inits, cons, i)
        if why:
            notes.append(f"BatchNormalization {names[j]} not folded into {names[i]}: {why}")
            continue
        w_t = inits[n.input[1]]
        W = tensor_to_array(w_t).astype(np.float64)
        scale, beta, mean, var = (tensor_to_array(inits[x]).astype(np.float64)
                                  for x in bn.input[1:5])
        eps = float(get_attr(bn, "epsilon", 1e-5))
        M = W.shape[0]
        if any(v.shape != (M,) for v in (scale, beta, mean, var)):
            notes.append(f"BatchNormalization {names[j]} not folded into {names[i]}: "
                         f"parameter shapes do not match {M} output channels")
            continue
        s = scale / np.sqrt(var + eps)
        has_bias = len(n.input) > 2 and n.input[2] != ""
        b = tensor_to_array(inits[n.input[2]]).astype(np.float64) if has_bias else np.zeros(M)
        if b.shape != (M,):
            notes.append(f"BatchNormalization {names[j]} not folded into {names[i]}: "
                         f"bias shape {list(b.shape)} is not [{M}]")
            continue
        W_new = (W * s.reshape((M,) + (1,) * (W.ndim - 1))).astype(np.float32)
        b_new = ((b - mean) * s + beta).astype(np.float32)
        set_initializer(w_t, W_new)
        if has_bias:
            set_initializer(inits[n.input[2]], b_new)
        else:
            bname = unique_name(f"{n.input[1]}.folded_bias", taken)
            g.initializer.append(numpy_helper.from_array(b_new, bname))
            inits[bname] = g.initializer[-1]
            if len(n.input) == 2:
                n.input.append(bname)
            else:
                n.input[2] = bname
        n.output[0] = bn.output[0]
        for vi in list(g.value_info):
            if vi.name == y:
                g.value_info.remove(vi)
        remove.add(j)
        bn_params.update(bn.input[1:5])
        folded.append({"conv": names[i], "bn": names[j]})
    if remove:
        kept = [nd for k, nd in enumerate(g.node) if k not in remove]
        del g.node[:]
        g.node.extend(kept)
        _drop_unused_initializers(g, bn_params)
    return folded, notes


def _fold_obstacle(conv, bn, y, inits, cons, conv_index) -> Optional[str]:
    if list(bn.input).count(y) != 1 or bn.input[0] != y:
        return "the Conv output is not only BN's data input"
    if int(get_attr(bn, "training_mode", 0)):
        return "training_mode=1"
    if int(get_attr(bn, "spatial", 1)) != 1:
        return "spatial=0"
    if not bn.output or not bn.output[0] or any(o for o in bn.output[1:]):
        return "BN produces running statistics (training outputs)"
    if len(bn.input) < 5 or any(x not in inits for x in bn.input[1:5]):
        return "scale/B/mean/var are not constant initializers"
    w = conv.input[1]
    if w not in inits:
        return "the Conv weight is not a constant initializer"
    tensors = [inits[w]] + [inits[x] for x in bn.input[1:5]]
    if len(conv.input) > 2 and conv.input[2]:
        if conv.input[2] not in inits:
            return "the Conv bias is not a constant initializer"
        tensors.append(inits[conv.input[2]])
        if len(cons.get(conv.input[2], [])) > 1:
            return "the Conv bias is shared with other nodes"
    if any(t.data_type != onnx.TensorProto.FLOAT for t in tensors):
        return "only float32 weights are folded"
    if len(cons.get(w, [])) > 1:
        return "the Conv weight is shared with other nodes"
    return None


def _drop_unused_initializers(g: onnx.GraphProto, candidates: set) -> None:
    """Remove those of ``candidates`` (initializer names) that nothing references any more."""
    used = {o.name for o in g.output} | {v.name for v in g.input}
    for n in g.node:
        used.update(n.input)
    used |= subgraph_references(g)
    unused = [t for t in g.initializer if t.name in candidates and t.name not in used]
    for t in unused:
        g.initializer.remove(t)


# --------------------------------------------------------------------------- pruning

def prune(model_or_path, pattern: str = "block", sparsity: float = 0.9, *,
          bank_size: Optional[int] = None, banks: Optional[int] = None, block=None,
          include=None, exclude=None, min_params: int = 1024, skip_first: bool = True,
          skip_depthwise: bool = True, recipe=None, fold_bn: bool = True,
          calibration=None, damp: float = DEFAULT_DAMP, match: str = "dense",
          channel_correction: Optional[bool] = None,
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
    """
    # ---- validate everything cheap before touching the model
    base = _check_spec({"pattern": pattern, "sparsity": sparsity, "bank_size": bank_size,
                        "banks": banks, **({"block": block} if block is not None else {})},
                       "", allow_info=False)
    if isinstance(min_params, bool) or not isinstance(min_params, (int, np.integer)) \
            or min_params < 0:
        raise SparsekitError(f"min_params must be a non-negative integer, got {min_params!r}")
    if match not in MATCH_MODES:
        raise SparsekitError(f"match must be one of {', '.join(MATCH_MODES)}, got {match!r}")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not (0.0 <= damp < 1e3):
        raise SparsekitError(f"damp must be a non-negative number, got {damp!r}")
    if channel_correction not in (None, True, False):
        raise SparsekitError(f"channel_correction must be True or False, got {channel_correction!r}")
    if channel_correction and calibration is None:
        raise SparsekitError("channel_correction needs calibration data (it matches the dense "
                             "model's output statistics on it)")
    inc = _compile_regexes(include, "include")
    exc = _compile_regexes(exclude, "exclude")
    rec = load_recipe(recipe)
    default_spec = _merge(base, rec["default"]) if rec else base
    _check_combination(default_spec, "")

    src = as_model(model_or_path)
    model = onnx.ModelProto()
    model.CopyFrom(src)
    g = model.graph
    names = node_names(g)

    report = PruneReport()
    report.settings = {
        "pattern": pattern, "sparsity": float(sparsity), "bank_size": bank_size, "banks": banks,
        "block": list(base["block"]) if base.get("block") else None,
        "include": [r.pattern for r in inc], "exclude": [r.pattern for r in exc],
        "min_params": int(min_params), "skip_first": bool(skip_first),
        "skip_depthwise": bool(skip_depthwise), "fold_bn": bool(fold_bn),
        "recipe": (str(recipe) if isinstance(recipe, (str, os.PathLike))
                   else ("<dict>" if recipe is not None else None)),
    }
    calib = None
    if calibration is not None:
        from .calibration import Calibration, load_calibration
        calib = calibration if isinstance(calibration, Calibration) else load_calibration(calibration, src)
        if channel_correction is None:
            # measured (docs/accuracy.md): with match="layer" the correction helps much (nothing
            # else restores a layer's shrunken spread); with "dense", whose refits to the dense
            # outputs already take up upstream errors, it helped and hurt about as often
            channel_correction = match == "layer"
        report.settings.update(calibration=calib.source or "<arrays>", calibration_samples=calib.samples,
                               damp=float(damp), match=match, channel_correction=bool(channel_correction))

    if fold_bn:
        report.folded_bn, fold_notes = fold_batchnorms(model, names)
        report.notes.extend(fold_notes)
        names = node_names(g)  # same names for the nodes that remain (per-op-type numbering)

    candidates = _with_lstm_layers(model, names, list(prunable_layers(model, names)))
    if not candidates:
        raise SparsekitError("no prunable layer: the model has no Conv, Gemm or MatMul "
                             "with a constant weight initializer")

    # ---- recipe layer keys must each name at least one candidate
    overrides: Dict[str, Dict[str, Any]] = {}
    listed: set = set()
    if rec:
        for key in rec["layers"]:
            hit = [c.name for c in candidates if _key_matches(key, c.name)]
            if not hit:
                known = ", ".join(c.name for c in candidates[:8])
                more = ", ..." if len(candidates) > 8 else ""
                raise SparsekitError(f"recipe layer {key!r} matches no prunable layer "
                                     f"(layers: {known}{more})")
        for c in candidates:
            ov: Dict[str, Any] = {}
            exact = None
            for key, spec in rec["layers"].items():
                if key == c.name:
                    exact = spec
                elif _key_matches(key, c.name):
                    ov = _merge(ov, spec)
            if exact is not None:
                ov = _merge(ov, exact)
            if exact is not None or any(_key_matches(k, c.name) for k in rec["layers"]):
                listed.add(c.name)
                overrides[c.name] = ov

    inits = initializer_map(g)
    cons = consumer_map(g)
    shapes = infer_shapes(model)

    # ---- selection
    plan: List[Tuple[Layer, Dict[str, Any]]] = []
    skip: Dict[str, str] = {}
    for c in candidates:
        spec = _merge(default_spec, overrides.get(c.name, {}))
        reason = _skip_reason(c, spec, c.name in listed, inc, exc, min_params, skip_first,
                              skip_depthwise)
        if reason is None:
            _check_combination(spec, f"layer {c.name}: ")
            reason = _geometry_problem(c, spec)
        if reason:
            skip[c.name] = reason
        else:
            plan.append((c, spec))

    # ---- pruning
    recon = (LayerwiseReconstruction(model, calib, damp, match, [c for c, _ in plan], cons,
                                     bool(channel_correction)) if calib else None)
    pruned_by: Dict[str, LayerRow] = {}      # weight name -> row of the layer that pruned it
    rows: Dict[str, LayerRow] = {}
    layer_of: Dict[str, Layer] = {}
    total = len(plan)
    for done, (c, spec) in enumerate(plan, start=1):
        layer_of[c.name] = c
        t = inits[c.weight]
        first = pruned_by.get(c.weight)
        if first is None:
            W = c.to_matrix(tensor_to_array(t))
            mask, eff = _make_mask(c, W, spec)
            Wp = np.where(mask, W, np.zeros((), dtype=W.dtype))
            why_not = supports(c) if recon else None
            if recon and why_not is None:
                Wp, errors, scale_range, note = recon.run(c, W, Wp, eff, spec["sparsity"], inits)
            set_initializer(t, c.from_matrix(Wp).astype(W.dtype, copy=False))
            nnz = int(np.count_nonzero(Wp))
            row = _row(c, eff, spec["sparsity"], nnz, shapes)
            if recon and why_not is None:
                row.method = "reconstruction"
                row.error_magnitude, row.error = errors
                row.channel_scale = list(scale_range) if scale_range else None
                if note:
                    row.note = note
                    report.notes.append(f"{c.name}: {note}")
            elif recon:
                row.note = why_not
                report.notes.append(f"{c.name}: {why_not}")
            others = [names[k] for k, _ in cons.get(c.weight, []) if k != c.index]
            if others:
                row.note = (f"weight shared with {', '.join(others)}: pruned once, "
                            "they see the pruned values")
                report.notes.append(f"{c.name}: {row.note}")
            pruned_by[c.weight] = row
        else:
            W = c.to_matrix(tensor_to_array(t))
            nnz = int(np.count_nonzero(W))
            same_view = (layer_of[first.name].transposed == c.transposed
                         and first.matrix_shape == [c.M, c.K])
            eff = ({"pattern": first.pattern, "bank_size": first.bank_size,
                    "block": first.block} if same_view else
                   {"pattern": "unstructured", "bank_size": None, "block": None})
            row = _row(c, eff, spec["sparsity"], nnz, shapes)
            row.shared_with = first.name
            row.note = f"shares weight {c.weight!r} with {first.name}, which pruned it"
        rows[c.name] = row
        if progress is not None:
            progress(done, total, c.name)

    # ---- report rows in graph order
    for c in candidates:
        if c.name in rows:
            report.layers.append(rows[c.name])
        else:
            report.skipped.append(SkippedLayer(
                name=c.name, op=c.op, weight=c.weight, weight_shape=list(c.weight_shape),
                reason=skip[c.name], params=c.params, flops=_flops(c, shapes)))

    if not report.layers and not any(s.reason.startswith("sparsity 0") for s in report.skipped):
        summary = "; ".join(f"{s.name}: {s.reason}" for s in report.skipped[:4])
        more = f"; ... ({len(report.skipped)} in all)" if len(report.skipped) > 4 else ""
        raise SparsekitError(f"no prunable layer left after selection ({summary}{more})")

    report.totals = _totals(candidates, report)
    _write_metadata(model, report, {c.name for c in candidates}, report.notes)
    return model, report


def _check_combination(spec: Dict[str, Any], where: str) -> None:
    if spec.get("pattern") == "bank" and spec.get("block") is not None:
        a, b = spec["block"]
        if a != 1:
            raise SparsekitError(f"{where}the bank pattern takes 1xB blocks (B output rows), "
                                 f"got {a}x{b}")


def _skip_reason(c: Layer, spec, listed: bool, inc, exc, min_params, skip_first,
                 skip_depthwise) -> Optional[str]:
    if c.dtype != np.float32:
        return f"weight dtype {c.dtype} is not supported (float32 only)"
    for r in exc:
        if r.search(c.name):
            return f"excluded by {r.pattern!r}"
    if inc and not any(r.search(c.name) for r in inc):
        return "not matched by include"
    if not listed:
        if c.op == "Conv" and c.grouped and skip_depthwise:
            return "depthwise conv" if c.depthwise else f"grouped conv (group={c.group})"
        if c.op == "Conv" and skip_first and c.in_channels is not None \
                and c.in_channels <= _FIRST_CONV_MAX_CHANNELS:
            return f"first conv ({c.in_channels} input channels)"
        if c.params < min_params:
            return f"{c.params} weights < min_params {min_params}"
    if spec["sparsity"] == 0.0:
        return "sparsity 0 (recipe)" if listed else "sparsity 0"
    return None


def _geometry_problem(c: Layer, spec) -> Optional[str]:
    p = spec["pattern"]
    if c.op in RECURRENT_OPS and p != "bank":
        return (f"{c.op} weights are pruned with pattern 'bank' only (Sparse{c.op} takes "
                "bank-balanced W and R)")
    if p == "block":
        a, b = spec.get("block") or DEFAULT_BLOCK
        if a > c.K or b > c.M:
            return f"block {a}x{b} larger than the weight matrix [M={c.M}, K={c.K}]"
    elif p == "bank":
        if spec.get("banks") is not None and spec["banks"] > c.K:
            return f"banks={spec['banks']} more than the reduction length K={c.K}"
    return None


def _make_mask(c: Layer, W: np.ndarray, spec) -> Tuple[np.ndarray, Dict[str, Any]]:
    p, s = spec["pattern"], spec["sparsity"]
    if p == "bank":
        if spec.get("bank_size") is None and spec.get("banks") is None:
            bs = min(_default_bank_size(c), c.K)
        else:
            bs = resolve_bank_size(c.K, spec.get("bank_size"), spec.get("banks"))
        rows = spec["block"][1] if spec.get("block") is not None else 1
        mask = bank_mask(W, s, bank_size=bs, block_rows=rows)
        return mask, {"pattern": "bank", "bank_size": bs, "block": [1, rows] if rows > 1 else None}
    if p == "block":
        a, b = spec.get("block") or DEFAULT_BLOCK
        return block_mask(W, s, (a, b)), {"pattern": "block", "bank_size": None, "block": [a, b]}
    return unstructured_mask(W, s), {"pattern": "unstructured", "bank_size": None, "block": None}


def _flops(c: Layer, shapes) -> Optional[int]:
    """2·MACs: 2 · (output elements) · K; symbolic dims count as 1; None when unknown."""
    dims = shapes.get(c.output)
    if not dims or any(d is None for d in dims):
        return None
    n = 1
    for d in dims:
        n *= d if isinstance(d, int) and d > 0 else 1
    if c.op in RECURRENT_OPS:
        n *= RECURRENT_OPS[c.op][0]  # Y [seq, D, batch, H]: one row of the G gate rows per unit
    return 2 * n * c.K


def _row(c: Layer, eff, requested: float, nnz: int, shapes) -> LayerRow:
    fl = _flops(c, shapes)
    params = c.params
    return LayerRow(
        name=c.name, op=c.op, weight=c.weight, weight_shape=list(c.weight_shape),
        matrix_shape=[c.M, c.K], pattern=eff["pattern"], bank_size=eff["bank_size"],
        block=eff["block"], requested=float(requested),
        achieved=1.0 - nnz / params if params else 0.0, params=params, nonzeros=nnz,
        flops=fl, flops_kept=None if fl is None else int(round(fl * nnz / params)))


def _totals(candidates: List[Layer], report: PruneReport) -> PruneTotals:
    t = PruneTotals(layers_pruned=len(report.layers), layers_skipped=len(report.skipped))
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


def _write_metadata(model: onnx.ModelProto, report: PruneReport, current: set,
                    notes: List[str]) -> None:
    """Record the recipe; entries of an earlier run survive for layers not re-pruned now."""
    layers: Dict[str, Any] = {}
    old = next((p for p in model.metadata_props if p.key == METADATA_KEY), None)
    if old is not None:
        try:
            prev = json.loads(old.value)
            for k, v in (prev.get("layers") or {}).items():
                if k in current:
                    layers[k] = v
        except (ValueError, AttributeError):
            notes.append(f"existing {METADATA_KEY} metadata was not valid JSON; replaced")
    for r in report.layers:
        layers[r.name] = {"op": r.op, "weight": r.weight, "pattern": r.pattern,
                          "sparsity": r.requested, "achieved": round(r.achieved, 6),
                          "bank_size": r.bank_size, "block": r.block}
    value = json.dumps({"version": RECIPE_VERSION, "layers": layers}, sort_keys=False)
    if old is not None:
        old.value = value
    else:
        entry = model.metadata_props.add()
        entry.key = METADATA_KEY
        entry.value = value


# --------------------------------------------------------------------------- LSTM (sequence.py)

def _with_lstm_layers(model: onnx.ModelProto, names: List[str],
                      candidates: List[Layer]) -> List[Layer]:
    """The Conv/Gemm/MatMul candidates plus each ONNX LSTM's or GRU's W and R ([D*G*H, I],
    [D*G*H, H] row matrices, banks along the input axis), in graph order."""
    from .sequence import lstm_layers
    extra = list(lstm_layers(model, names))
    if not extra:
        return candidates
    return sorted(candidates + extra, key=lambda c: c.index)  # stable: W before R


def _default_bank_size(c: Layer) -> int:
    """prune's bank size when neither bank_size nor banks is given (before min(., K))."""
    if c.op in RECURRENT_OPS:
        return LSTM_DEFAULT_BANK
    return DEFAULT_BANK_SIZE
