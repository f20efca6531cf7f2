"""convert: rewrite a pruned (or any) model's sparse layers into ai.sparsekit ops.

For every Conv / Gemm / MatMul with a constant float32 weight: find the pattern (from the zeros,
with the recipe `prune` recorded as a hint; models pruned elsewhere convert from their zeros
alone), choose a format, decide sparse or dense (a density threshold per format, or `autotune`
timing both on this machine), absorb the epilogue that follows (bias, BatchNormalization,
Relu/Clip, residual Add), and emit the op with its packed weights as initializers.  Depthwise
convs next to sparse ops become DepthwiseConv so the backbone stays in NCHW inside sparsekit's
ops.  With `predict_relu`, Conv -> ReLU layers that stay dense may become PredictedConv
(predict.py).  The rules are documented in docs/convert.md.

The package, in the order its modules build on each other:
  report     LayerDecision, ConvertReport
  choice     the packed format a weight gets (choose_format) and the density limits
  plan       candidates, per-layer plans (sparse op or DepthwiseConv + fused epilogue)
  autotune   dense vs sparse timing of one layer
  recurrent  LSTM/GRU -> SparseLSTM/SparseGRU
  layout     chains of blockable ops -> NCHWc8 with Reorders at their edges
  (here)     convert(): the stages in order, the graph rewrite, the output check
"""
from __future__ import annotations

import json
from typing import Callable, Dict, Optional

import onnx

from .. import external, format
from ..errors import SparsekitError
from ..fold_bn import fold_batchnorms
from ..graph import NameFilter, Replacement, prunable_layers, replace_chains, set_metadata
from ..io import as_model
from ..predict import DEFAULT_BITS, DEFAULT_MIN_ZEROS, DEFAULT_RECALL, plan_predicted
from ..weights import read_weights, refused_layers
from .autotune import AutoTuner, check_autotune_dims, decide
from .choice import DEFAULT_MAX_DENSITY, choose_format, thresholds
from .layout import LAYOUT_CHOICES, apply_layouts, check_layout
from .plan import (Context, Plan, bridges_depthwise, dense_row, depthwise_output,
                   plan_depthwise, plan_sparse)
from .recurrent import LSTM_MAX_DENSITY, plan_recurrent
from .report import NO_ZEROS, ConvertReport, LayerDecision

__all__ = ["convert", "ConvertReport", "LayerDecision", "choose_format", "CONVERTED_KEY",
           "DEFAULT_MAX_DENSITY", "LSTM_MAX_DENSITY", "LAYOUT_CHOICES"]

CONVERTED_KEY = "sparsekit.converted"

Progress = Optional[Callable[[int, int, str], None]]


def convert(model_or_path, *, max_density: Optional[Dict[str, float]] = None,
            autotune: bool = False, threads: Optional[int] = None, depthwise: bool = True,
            include: Optional[str] = None, exclude: Optional[str] = None,
            autotune_dims: Optional[Dict[str, int]] = None,
            predict_relu: bool = False, calibration=None,
            min_zeros: float = DEFAULT_MIN_ZEROS, recall: float = DEFAULT_RECALL,
            predict_bits: int = DEFAULT_BITS, layout: Optional[str] = None,
            merge: bool = True, progress: Progress = None):
    """Return (converted ModelProto, ConvertReport).  The input model is never modified.

    max_density: per-format density limits overriding DEFAULT_MAX_DENSITY ("block4", "block1").
    autotune: time dense vs sparse for every layer with zeros (onnxruntime, `threads` threads)
      and keep the faster; the thresholds are then not used.  Symbolic dims of the timed inputs
      take their value from `autotune_dims` ({dim name: size}), else 1.
    depthwise: turn depthwise convs next to sparse ops into DepthwiseConv.
    layout: activations between chained DepthwiseConv / 1x1 SparseConv (1x4 blocks) ops in
      "NCHW", in 8-channel blocks ("NCHWc8", Reorder nodes at each chain's edges), or "auto":
      per chain, whichever is faster timed alone (`threads`).  Default: "auto" with
      autotune, else "NCHW".  report.chains lists every chain and its choice.
    merge: inside blocked chains, merge each expansion on a plane of >= 28x28 with the
      depthwise conv after it (SparseConvDepthwise, run band by band; report.chains[].fused).
    include / exclude: regexes (re.search) on layer names, or lists of them; other layers stay
      dense (graph.NameFilter: the same meaning as in prune).
    predict_relu: afterwards turn Conv -> ReLU/Clip(0, x) layers that stayed dense into
      PredictedConv where `calibration` (a calibration.Calibration) shows at least `min_zeros`
      zeros after the activation, with the margin that keeps `recall` of the positive outputs
      and `predict_bits`-bit prediction weights (with `autotune`: only where it is faster);
      report.predicted lists every such chain.
    progress(done, total, name): called after each layer (and each prediction step).
    """
    src = as_model(model_or_path)
    n_sparse = sum(n.domain == format.DOMAIN for n in src.graph.node)
    if n_sparse:
        raise SparsekitError(f"model is already converted (it has {n_sparse} ai.sparsekit "
                             "op(s)); convert the pruned dense model instead")
    limits = thresholds(max_density)
    names = NameFilter(include, exclude)
    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise SparsekitError(f"threads must be >= 1, got {threads}")
    dims = check_autotune_dims(autotune_dims)
    layout = check_layout(layout) or ("auto" if autotune else "NCHW")
    if predict_relu and calibration is None:
        raise SparsekitError("predict_relu needs calibration data: whether a layer's outputs "
                             "are mostly zero is measured on real inputs")

    # a copy with weights in any encoding (Constant nodes, Cast, Transpose, ...) as initializers
    model, weight_notes = read_weights(src)
    report = ConvertReport(settings={
        "max_density": limits, "autotune": bool(autotune), "threads": threads,
        "depthwise": bool(depthwise), "include": include, "exclude": exclude,
        "autotune_dims": dims, "layout": layout, "merge": bool(merge)})
    report.notes.extend(weight_notes)
    report.folded_bn, bn_notes = fold_batchnorms(model)
    report.notes.extend(bn_notes)

    ctx = Context(model, limits, bool(autotune), names)
    layers = list(prunable_layers(model, ctx.names))
    report.skipped = [r.row() for r in refused_layers(model, ctx.names,
                                                      {l.index for l in layers})]
    rows: Dict[int, LayerDecision] = {}
    plans: Dict[int, Plan] = {}
    _plan_layers(ctx, layers, AutoTuner(threads, ctx.index, dims) if autotune else None,
                 depthwise, rows, plans, progress)
    plan_recurrent(ctx, rows, plans)
    _note_shared_weights(ctx, rows, plans)
    replace_chains(model, [Replacement(p.absorbed, p.node, p.inits,
                                       range(1, min(len(p.node.input), 5)))
                           for p in plans.values()], opset=format.opset_import())
    report.layers = [rows[i] for i in sorted(rows)]
    report.chains = apply_layouts(model, layout, ctx.shapes, threads=threads, dims=dims,
                                  merge=merge)
    _note_heads(report)
    set_metadata(model, CONVERTED_KEY, json.dumps(
        {"version": 1, "layers": {l.name: l.format for l in report.layers
                                  if l.decision in ("sparse", "depthwise")}}))
    _check_output(model, src, report)
    if predict_relu:
        model, rows_predicted = plan_predicted(
            model, calibration, min_zeros=min_zeros, recall=recall, bits=predict_bits,
            autotune=autotune, threads=threads, include=include, exclude=exclude,
            progress=progress)
        report.predicted = [r for r in rows_predicted if r.activation]
    return model, report


def _plan_layers(ctx: Context, layers, tuner: Optional[AutoTuner], depthwise: bool,
                 rows: Dict[int, LayerDecision], plans: Dict[int, Plan], progress: Progress):
    """Plan every Conv/Gemm/MatMul: the sparse layers first, then the depthwise convs (which
    become DepthwiseConv only next to a sparse op)."""
    done = 0

    def tick(name):
        nonlocal done
        done += 1
        if progress:
            progress(done, len(layers), name)

    def plan_one(layer, bridge=False):
        row, plan = plan_sparse(ctx, layer, bridge)
        if plan is not None and tuner is not None:
            row, plan = decide(tuner, ctx, row, plan)
        rows[layer.index] = row
        if plan is not None:
            plans[layer.index] = plan
            ctx.claimed.update(n.output[0] for n in plan.fusion.nodes)
            _keep_on_disk(ctx, layer, plan)

    for layer in layers:
        if layer.depthwise:
            continue  # decided after the sparse layers are known
        excluded = ctx.filter.why_not(layer.name)
        if excluded:
            rows[layer.index] = dense_row(ctx.model, layer, "-", excluded)
        else:
            plan_one(layer)
        tick(layer.name)

    def sparse_inputs():   # what the planned sparse ops read
        return {p.layer.node.input[0] for p in plans.values()}

    sparse_in = sparse_inputs()
    dw_outputs = {depthwise_output(ctx, x) for x in layers
                  if depthwise and x.depthwise and not ctx.filter.why_not(x.name)}
    for layer in layers:   # dense 1x1 convs that join a depthwise conv to the sparse backbone
        row = rows.get(layer.index)
        if row is not None and row.reason == NO_ZEROS \
                and bridges_depthwise(ctx, layer, dw_outputs, sparse_in):
            plan_one(layer, bridge=True)
    sparse_out = {p.fusion.output for p in plans.values()}
    sparse_in = sparse_inputs()   # the bridges now included
    for layer in layers:
        if not layer.depthwise:
            continue
        excluded = ctx.filter.why_not(layer.name)
        if excluded:
            rows[layer.index] = dense_row(ctx.model, layer, "depthwise", excluded)
        elif not depthwise:
            rows[layer.index] = dense_row(ctx.model, layer, "depthwise",
                                          "DepthwiseConv turned off (depthwise=False)")
        else:
            row, plan = plan_depthwise(ctx, layer, sparse_out, sparse_in)
            rows[layer.index] = row
            if plan is not None:
                plans[layer.index] = plan
        tick(layer.name)


def _keep_on_disk(ctx: Context, layer, plan: Plan) -> None:
    """A weight read lazily from external data: its packed tensors go to the scratch file too,
    so memory holds one layer's tensors at a time (external.py)."""
    if external.is_deferred(ctx.index.initializers[layer.weight]):
        plan.inits[:] = [external.spilled(t) for t in plan.inits]


def _note_shared_weights(ctx: Context, rows: Dict[int, LayerDecision],
                         plans: Dict[int, Plan]) -> None:
    """A weight some node that stays keeps reading stays in the file (and is not saved)."""
    for i, plan in plans.items():
        users = [ctx.names[j] for j, n in enumerate(ctx.model.graph.node)
                 if j not in plans and plan.layer.weight in n.input]
        if rows[i].decision == "sparse" and users:
            rows[i].note = ("the dense weight stays in the file: also read by "
                            + ", ".join(users[:3]) + (" ..." if len(users) > 3 else ""))


def _note_heads(report: ConvertReport) -> None:
    """A layer that now writes a blocked chain's input says so (a dense one is a SparseConv
    with its weights in 1x4 blocks)."""
    rows = {l.name: l for l in report.layers}
    for c in report.chains:
        for name in (c.heads if c.layout == "NCHWc8" else {}).values():
            if name in rows:
                note = "writes NCHWc8 for the chain after it (SparseConv, input_layout NCHW)"
                rows[name].note = f"{rows[name].note}; {note}" if rows[name].note else note


def _check_output(model: onnx.ModelProto, src: onnx.ModelProto, report: ConvertReport) -> None:
    """onnx.checker on the output; a failure is our bug unless the input fails it too."""
    if model.ByteSize() >= 2**31 - 1:
        return  # the checker cannot take a ModelProto this large in memory
    try:
        onnx.checker.check_model(external.stubbed(model))
    except onnx.checker.ValidationError as e:
        try:
            onnx.checker.check_model(external.stubbed(src))
        except (onnx.checker.ValidationError, ValueError) as e_src:
            report.notes.append("the input model does not pass onnx.checker either: "
                                + str(e_src).strip().splitlines()[0])
            return
        raise RuntimeError(f"converted model fails onnx.checker: {e}") from e
