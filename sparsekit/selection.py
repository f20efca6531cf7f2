"""Which layers prune prunes, with which settings, and why the others stay dense.

:func:`selection_rules` validates the selection options (pattern settings, recipe, include /
exclude, the default skips) before any model is read; :func:`select_layers` applies them to a
model.  prune prunes the chosen layers; analyze measures the same ones.  docs/prune.md, "Which
layers are pruned", lists the rules in the order they apply.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np
import onnx

from .errors import SparsekitError
from .graph import Layer, NameFilter, infer_shapes, node_names, prunable_layers
from .patterns import DEFAULT_BLOCK, resolve_bank_size
from .recipe import check_combination, check_spec, load_recipe, merge_specs, recipe_overrides
from .sequence import LSTM_DEFAULT_BANK, RECURRENT_OPS, lstm_layers
from .weights import PRUNE_KINDS, refusal_summary, refused_layers

__all__ = ["select_layers", "selection_rules", "resolve_pattern", "layer_flops", "Selection",
           "SelectionRules", "SkippedLayer", "DEFAULT_MIN_PARAMS", "DEFAULT_BANK_SIZE"]

DEFAULT_MIN_PARAMS = 1024       # layers with fewer weights stay dense unless a recipe lists them
DEFAULT_BANK_SIZE = 64          # bank pattern without bank_size/banks: min(64, K)
_FIRST_CONV_MAX_CHANNELS = 4    # a Conv with at most this many input channels reads the image


@dataclass
class SkippedLayer:
    """A Conv / Gemm / MatMul left dense, and why: a candidate the rules skipped, or one whose
    weight cannot be taken (weights.refused_layers: params is then the weight's size where
    shape inference knows it, else 0, and flops None)."""

    name: str
    op: str
    weight: str
    weight_shape: List[int]
    reason: str
    params: int
    flops: Optional[int]             # dense 2·MACs (the layer stays dense)


@dataclass
class SelectionRules:
    """The validated selection options (see :func:`selection_rules`)."""

    keyword_spec: Dict[str, Any]     # the pattern settings given as arguments
    default_spec: Dict[str, Any]     # ... with the recipe's default applied
    recipe: Optional[Dict[str, Any]]  # load_recipe's result, or None
    names: NameFilter                 # include / exclude
    min_params: int
    skip_first: bool
    skip_depthwise: bool


@dataclass
class Selection:
    """What :func:`select_layers` chose in one model."""

    candidates: List[Layer]                      # every prunable layer, graph order
    chosen: List[Tuple[Layer, Dict[str, Any]]]   # the layers to prune and their merged settings
    skipped: List[SkippedLayer]                  # the other candidates, graph order
    shapes: Dict[str, list]                      # the model's inferred tensor shapes (FLOP counts)
    refused: List[SkippedLayer] = field(default_factory=list)  # weight not taken (weights.py)
    listed: List[SkippedLayer] = field(default_factory=list)   # skipped + refused, graph order


def selection_rules(pattern: str, sparsity: float, *, bank_size: Optional[int] = None,
                    banks: Optional[int] = None, block=None, include=None, exclude=None,
                    min_params: int = DEFAULT_MIN_PARAMS, skip_first: bool = True,
                    skip_depthwise: bool = True, recipe=None) -> SelectionRules:
    """Validate the selection options of :func:`sparsekit.prune.prune` (same meanings).

    ``recipe`` (a path or a dict) is read here; its ``default`` overrides the keyword settings.
    Raises SparsekitError on any invalid option.
    """
    keyword_spec = check_spec({"pattern": pattern, "sparsity": sparsity, "bank_size": bank_size,
                               "banks": banks, **({"block": block} if block is not None else {})},
                              "", allow_info=False)
    if isinstance(min_params, bool) or not isinstance(min_params, (int, np.integer)) \
            or min_params < 0:
        raise SparsekitError(f"min_params must be a non-negative integer, got {min_params!r}")
    names = NameFilter(include, exclude)
    rec = load_recipe(recipe)
    default_spec = merge_specs(keyword_spec, rec["default"]) if rec else keyword_spec
    check_combination(default_spec, "")
    return SelectionRules(keyword_spec=keyword_spec, default_spec=default_spec, recipe=rec,
                          names=names, min_params=int(min_params),
                          skip_first=bool(skip_first), skip_depthwise=bool(skip_depthwise))


def select_layers(model: onnx.ModelProto, rules: SelectionRules,
                  names: Optional[List[str]] = None) -> Selection:
    """The candidate layers of ``model`` (BatchNormalization already folded, if wanted), the
    ones ``rules`` choose with their settings, and the skipped ones with the reason.

    ``names``: the nodes' display names (``graph.node_names``), computed when not given.
    ``model`` should come from weights.read_weights, so weights in other encodings are there;
    the layers whose weight still cannot be taken are ``refused``, with the reason.
    Raises SparsekitError when the model has no candidate (naming why, when its layers were
    refused), when a recipe key matches no candidate, and when every candidate is skipped for a
    reason other than sparsity 0.
    """
    names = names if names is not None else node_names(model.graph)
    candidates = _with_recurrent_layers(model, names, list(prunable_layers(model, names)))
    refusals = refused_layers(model, names, {c.index for c in candidates})
    if not candidates:
        if refusals:
            raise SparsekitError("no prunable layer: " + refusal_summary(refusals))
        raise SparsekitError("no prunable layer: the model has no Conv, Gemm or MatMul "
                             "with a constant weight initializer")
    overrides: Dict[str, Dict[str, Any]] = {}
    listed: Set[str] = set()
    if rules.recipe:
        overrides, listed = recipe_overrides(rules.recipe, [c.name for c in candidates])
    shapes = infer_shapes(model)
    chosen: List[Tuple[Layer, Dict[str, Any]]] = []
    skipped: List[SkippedLayer] = []
    in_order: List[Tuple[int, SkippedLayer]] = []
    for c in candidates:
        spec = merge_specs(rules.default_spec, overrides.get(c.name, {}))
        reason = _skip_reason(c, spec, c.name in listed, rules)
        if reason is None:
            check_combination(spec, f"layer {c.name}: ")
            reason = _geometry_problem(c, spec)
        if reason:
            skipped.append(SkippedLayer(
                name=c.name, op=c.op, weight=c.weight, weight_shape=list(c.weight_shape),
                reason=reason, params=c.params, flops=layer_flops(c, shapes)))
            in_order.append((c.index, skipped[-1]))
        else:
            chosen.append((c, spec))
    # the output would equal the input: say why rather than write it
    if not chosen and not any(s.reason.startswith("sparsity 0") for s in skipped):
        summary = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:4])
        more = f"; ... ({len(skipped)} in all)" if len(skipped) > 4 else ""
        raise SparsekitError(f"no prunable layer left after selection ({summary}{more})")
    refused = []
    for r in refusals:
        if r.kind not in PRUNE_KINDS:
            continue    # a MatMul of two run-time tensors: no weight to leave dense
        dims = shapes.get(r.weight) or []
        known = bool(dims) and all(isinstance(d, int) for d in dims)
        refused.append(SkippedLayer(name=r.name, op=r.op, weight=r.weight,
                                    weight_shape=list(dims) if known else [], reason=r.reason,
                                    params=int(np.prod(dims)) if known else 0, flops=None))
        in_order.append((r.index, refused[-1]))
    return Selection(candidates=candidates, chosen=chosen, skipped=skipped, shapes=shapes,
                     refused=refused, listed=[s for _, s in sorted(in_order, key=lambda t: t[0])])


def resolve_pattern(layer: Layer, spec: Dict[str, Any]) -> Dict[str, Any]:
    """The pattern ``layer`` is pruned with under the settings ``spec``, defaults resolved:
    ``{"pattern", "bank_size", "block"}`` as recorded in the metadata (bank size in use, block
    ``[A, B]`` or None)."""
    p = spec["pattern"]
    if p == "bank":
        if spec.get("bank_size") is None and spec.get("banks") is None:
            bs = min(_default_bank_size(layer), layer.K)
        else:
            bs = resolve_bank_size(layer.K, spec.get("bank_size"), spec.get("banks"))
        rows = spec["block"][1] if spec.get("block") is not None else 1
        return {"pattern": "bank", "bank_size": bs, "block": [1, rows] if rows > 1 else None}
    if p == "block":
        a, b = spec.get("block") or DEFAULT_BLOCK
        return {"pattern": "block", "bank_size": None, "block": [a, b]}
    return {"pattern": "unstructured", "bank_size": None, "block": None}


def layer_flops(layer: Layer, shapes) -> Optional[int]:
    """2·MACs: 2 · (output elements) · K; symbolic dims count as 1; None when unknown."""
    dims = shapes.get(layer.output)
    if not dims or any(d is None for d in dims):
        return None
    n = 1
    for d in dims:
        n *= d if isinstance(d, int) and d > 0 else 1
    if layer.op in RECURRENT_OPS:
        n *= RECURRENT_OPS[layer.op][0]  # Y [seq, D, batch, H]: one row of the G gate rows per unit
    return 2 * n * layer.K


def _skip_reason(c: Layer, spec, listed: bool, rules: SelectionRules) -> Optional[str]:
    if c.dtype != np.float32:
        return f"weight dtype {c.dtype} is not supported (float32 only)"
    excluded_by = rules.names.excluded_by(c.name)
    if excluded_by is not None:
        return f"excluded by {excluded_by!r}"
    if not rules.names.included(c.name):
        return "not matched by include"
    if not listed:
        if c.op == "Conv" and c.grouped and rules.skip_depthwise:
            return "depthwise conv" if c.depthwise else f"grouped conv (group={c.group})"
        if c.op == "Conv" and rules.skip_first and c.in_channels is not None \
                and c.in_channels <= _FIRST_CONV_MAX_CHANNELS:
            return f"first conv ({c.in_channels} input channels)"
        if c.params < rules.min_params:
            return f"{c.params} weights < min_params {rules.min_params}"
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


def _with_recurrent_layers(model: onnx.ModelProto, names: List[str],
                           candidates: List[Layer]) -> List[Layer]:
    """The Conv/Gemm/MatMul candidates plus each ONNX LSTM's or GRU's W and R ([D*G*H, I],
    [D*G*H, H] row matrices, banks along the input axis), in graph order."""
    extra = list(lstm_layers(model, names))
    if not extra:
        return candidates
    return sorted(candidates + extra, key=lambda c: c.index)  # stable: W before R


def _default_bank_size(c: Layer) -> int:
    """prune's bank size when neither bank_size nor banks is given (before min(., K))."""
    if c.op in RECURRENT_OPS:
        return LSTM_DEFAULT_BANK
    return DEFAULT_BANK_SIZE
