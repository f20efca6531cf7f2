"""Per-layer planning: for each candidate layer the sparse (or DepthwiseConv) node that replaces
it with its fused epilogue, or the reason it stays dense (which layers are candidates, and why
the others are not, is weights.py's)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from .. import pack
from ..format import conv_geometry_problem
from ..fuse import Fusion, GraphIndex, plan_fusion
from ..graph import (Layer, NameFilter, get_attr, infer_shapes, node_names, producer_map,
                     resolve_pads, tensor_to_array)
from ..predict import NONFINITE_REASON, all_finite
from ..recipe import recorded_layers
from .choice import FORMAT_LABEL, FormatChoice, choose_format
from .report import NO_ZEROS, LayerDecision

__all__ = ["Plan", "Context", "dense_row", "conv_pads", "plan_sparse", "plan_depthwise"]


@dataclass
class Plan:
    node: onnx.NodeProto                  # the new ai.sparsekit node
    inits: List[onnx.TensorProto]
    absorbed: List[onnx.NodeProto]        # the original node and its fused epilogue
    fusion: Fusion
    layer: Layer
    choice: Optional["FormatChoice"] = None   # sparse ops: the format chosen


class Context:
    """What every planner reads: the model being rewritten and facts about it."""

    def __init__(self, model: onnx.ModelProto, thresholds: Dict[str, float], autotune: bool,
                 names: NameFilter):
        self.model = model
        self.filter = names
        self.thresholds = thresholds
        self.autotune = autotune
        self.names = node_names(model.graph)
        self.shapes = infer_shapes(model)
        self.index = GraphIndex(model)
        self.recipe = recorded_layers(model)
        self.claimed: set = set()        # first outputs of nodes some plan absorbs
        self.producers = producer_map(model)
        self.graph_inputs = {i.name for i in model.graph.input}


# ---------------------------------------------------------------------------------------------
# per-layer planning


def dense_row(model, layer: Layer, pattern: str, reason: str,
               W: Optional[np.ndarray] = None) -> LayerDecision:
    if W is None:
        W = layer.matrix(model)
    density = float((W != 0).mean()) if W.size else 1.0
    nbytes = int(np.prod(layer.weight_shape)) * np.dtype(layer.dtype).itemsize
    return LayerDecision(layer.name, layer.op, [layer.M, layer.K], density, pattern, "dense",
                         reason, dense_bytes=nbytes)


def conv_pads(ctx: "Context", layer: Layer) -> Tuple[Optional[list], str]:
    """Explicit [top, left, bottom, right] pads (auto_pad resolved), or (None, why)."""
    node = layer.node
    xs = ctx.shapes.get(node.input[0]) or []
    strides = list(get_attr(node, "strides", [1, 1]))
    dilations = list(get_attr(node, "dilations", [1, 1]))
    pads, why = resolve_pads(node, xs[2:] if len(xs) == 4 else [], layer.kernel_shape, strides,
                             dilations)
    if pads is not None and len(layer.kernel_shape) == 2 and len(strides) == len(dilations) == 2:
        why = conv_geometry_problem(layer.kernel_shape, strides, dilations, pads)
        if why:
            return None, why
    return pads, why


def _unsupported(ctx: Context, layer: Layer) -> Optional[str]:
    """Why this layer cannot become a sparse op (None if it can)."""
    node = layer.node
    if layer.dtype != np.float32:
        return f"{np.dtype(layer.dtype).name} weights are not supported (float32 only)"
    if layer.op == "Conv":
        if len(layer.kernel_shape) != 2:
            return f"{len(layer.kernel_shape)}-D conv (only 2-D convs are converted)"
        if layer.grouped:
            return f"grouped conv (group {layer.group}; only group 1 and depthwise)"
        if len(get_attr(node, "strides", [1, 1])) != 2 or \
                len(get_attr(node, "dilations", [1, 1])) != 2:
            return "strides/dilations do not have 2 values"
        pads, why = conv_pads(ctx, layer)
        if pads is None:
            return why
    elif layer.op == "Gemm":
        if get_attr(node, "transA", 0):
            return "Gemm with transA=1"
    return None


def _own_bias(ctx: Context, layer: Layer) -> Tuple[Optional[np.ndarray], float, str]:
    """(bias [M] or None, weight multiplier, reason it cannot be used)."""
    node = layer.node
    alpha = 1.0
    bias = None
    if layer.op == "Gemm":
        alpha = float(get_attr(node, "alpha", 1.0))
        beta = float(get_attr(node, "beta", 1.0))
        if len(node.input) > 2 and node.input[2]:
            c = ctx.index.constant(node.input[2])
            if c is None:
                return None, alpha, "Gemm's C is not a constant"
            c = np.asarray(c, dtype=np.float64) * beta
            if c.size == 1:
                bias = np.full(layer.M, float(c.reshape(-1)[0]))
            elif c.ndim <= 2 and c.shape[-1] == layer.M and c.size == layer.M:
                bias = c.reshape(-1)
            else:
                return None, alpha, f"Gemm's C of shape {list(c.shape)} is not a per-feature bias"
    elif layer.op == "Conv" and len(node.input) > 2 and node.input[2]:
        b = ctx.index.constant(node.input[2])
        if b is None:
            return None, alpha, "the Conv bias is not a constant"
        b = np.asarray(b, dtype=np.float64).reshape(-1)
        if b.size != layer.M:
            return None, alpha, f"the Conv bias has {b.size} values, expected {layer.M}"
        bias = b
    return bias, alpha, ""


# A dense 1x1 conv that joins a depthwise conv to a sparse op (MobileNetV2's and EfficientNet's
# first block: 32 -> 16 channels, too small for prune's default --min-params) is packed whole as
# 1x4 blocks, so the stem, that depthwise conv and the rest of the backbone form one sparsekit
# chain (and one blocked layout) instead of onnxruntime's convs and a reorder in between.
BRIDGE = FormatChoice("bsr", 4, None, None, 1.0, "block4", "dense (1x1 between sparsekit ops)")
BRIDGE_REASON = "dense 1x1 conv between a depthwise conv and a sparse op: packed whole (1x4)"


def plan_sparse(ctx: Context, layer: Layer, bridge: bool = False):
    """A sparse op for ``layer``; with ``bridge``, a layer without zeros is packed whole."""
    model = ctx.model
    W_raw = layer.matrix(model)
    why = _unsupported(ctx, layer)
    if why:
        return dense_row(model, layer, "-", why, W_raw), None
    own_bias, alpha, why = _own_bias(ctx, layer)
    if why:
        return dense_row(model, layer, "-", why, W_raw), None
    if not all_finite(W_raw, own_bias):
        return dense_row(model, layer, "-", NONFINITE_REASON, W_raw), None
    W = W_raw.astype(np.float32, copy=False)   # nothing below changes W in place
    if alpha != 1.0:
        W = W * np.float32(alpha)
    choice, p = choose_format(W, ctx.recipe.get(layer.name))
    if choice is None and bridge:
        choice = BRIDGE
    if choice is None:
        return dense_row(model, layer, p.describe(), NO_ZEROS, W_raw), None
    limit = ctx.thresholds[choice.key]
    row = dense_row(model, layer, choice.pattern, "", W_raw)
    if not ctx.autotune and choice.density > limit and choice is not BRIDGE:
        row.reason = (f"density {choice.density:.2f} > {limit:.2f}, the most at which "
                      f"{FORMAT_LABEL[choice.key]} are expected to beat dense")
        return row, None

    node = layer.node
    is_conv = layer.op == "Conv"
    y_shape = ctx.shapes.get(node.output[0])
    if is_conv:
        out_rank = 4
    elif layer.op == "Gemm":
        out_rank = 2
    else:
        xs = ctx.shapes.get(node.input[0])
        out_rank = len(xs) if xs is not None else None
    fusion = plan_fusion(ctx.index, node, layer.M, is_conv, y_shape, ctx.shapes,
                         frozenset(ctx.claimed), out_rank=out_rank)
    if not all_finite(fusion.scale, fusion.bias):   # a BatchNormalization or Add folded in
        row.reason = NONFINITE_REASON
        return row, None
    kw = dict(fmt=choice.fmt, block=choice.block, bank_size=choice.bank_size, keep=choice.keep,
              activation=fusion.activation,
              clip_min=fusion.clip_min if fusion.activation == "clip" else None,
              clip_max=fusion.clip_max if fusion.activation == "clip" else None,
              residual=fusion.residual, residual_after_act=fusion.residual_after_act)
    if is_conv:
        w4 = W.reshape(layer.weight_shape)
        w4, bias = fusion.apply(w4, own_bias)
        if not all_finite(w4, bias):   # finite parts whose product overflows float32
            row.reason = NONFINITE_REASON
            return row, None
        pads, _ = conv_pads(ctx, layer)
        new, inits = pack.make_sparse_conv_node(
            layer.name, node.input[0], fusion.output, w4, bias,
            strides=get_attr(node, "strides", [1, 1]), pads=pads,
            dilations=get_attr(node, "dilations", [1, 1]), **kw)
    else:
        Wf, bias = fusion.apply(W, own_bias)
        if not all_finite(Wf, bias):
            row.reason = NONFINITE_REASON
            return row, None
        new, inits = pack.make_sparse_gemm_node(layer.name, node.input[0], fusion.output, Wf,
                                                bias, **kw)
    row.decision, row.format = "sparse", choice.label
    row.reason = BRIDGE_REASON if choice is BRIDGE else \
        f"density {choice.density:.2f} <= {limit:.2f} ({FORMAT_LABEL[choice.key]})"
    row.fused = fusion.describe()
    row.sparse_bytes = _packed_bytes(new, inits)
    return row, Plan(new, inits, [node] + fusion.nodes, fusion, layer, choice)


def _packed_bytes(node: onnx.NodeProto, inits: List[onnx.TensorProto]) -> int:
    """Bytes of the packed weight tensors (values, indices, group_ptr: inputs 1-3)."""
    by_name = {t.name: t for t in inits}
    return sum(numpy_helper.to_array(by_name[x]).nbytes for x in node.input[1:4] if x in by_name)


def depthwise_output(ctx: Context, layer: Layer) -> str:
    """The tensor a DepthwiseConv made from ``layer`` would write (after what it fuses)."""
    return _depthwise_fusion(ctx, layer).output


def _depthwise_fusion(ctx: Context, layer: Layer) -> Fusion:
    return plan_fusion(ctx.index, layer.node, layer.M, True, None, {}, frozenset(ctx.claimed),
                       allow_residual=False)


def bridges_depthwise(ctx: Context, layer: Layer, dw_outputs: set, sparse_in: set) -> bool:
    """``layer`` is a plain 1x1 conv that reads what a depthwise conv writes (``dw_outputs``:
    :func:`depthwise_output` of each) and whose output (through what a plan would fuse) a sparse
    op reads."""
    node = layer.node
    if layer.op != "Conv" or layer.group != 1 or list(layer.kernel_shape) != [1, 1] \
            or any(s != 1 for s in get_attr(node, "strides", [1, 1])) \
            or any(p != 0 for p in get_attr(node, "pads", [0, 0, 0, 0])) \
            or node.input[0] not in dw_outputs:
        return False
    fusion = plan_fusion(ctx.index, node, layer.M, True, ctx.shapes.get(node.output[0]),
                         ctx.shapes, frozenset(ctx.claimed), out_rank=4)
    return fusion.output in sparse_in


def plan_depthwise(ctx: Context, layer: Layer, sparse_out: set, sparse_in: set):
    node = layer.node
    w = tensor_to_array(ctx.index.initializers[layer.weight])
    row = dense_row(ctx.model, layer, "depthwise", "")
    k = layer.kernel_shape
    strides = list(get_attr(node, "strides", [1, 1]))
    pads, pad_why = (conv_pads(ctx, layer) if len(k) == 2 else (None, ""))
    if w.dtype != np.float32:
        row.reason = f"{w.dtype.name} weights are not supported (float32 only)"
    elif len(k) != 2 or k[0] != k[1]:
        row.reason = f"kernel {k} is not square 2-D (DepthwiseConv: k x k)"
    elif layer.group != layer.M:
        row.reason = f"channel multiplier {layer.M // layer.group} (DepthwiseConv: 1)"
    elif list(get_attr(node, "dilations", [1, 1])) != [1, 1]:
        row.reason = "dilated depthwise conv (DepthwiseConv: dilation 1)"
    elif len(strides) != 2 or strides[0] != strides[1]:
        row.reason = f"strides {strides} differ along H and W (DepthwiseConv: equal)"
    elif pads is None:
        row.reason = pad_why
    if row.reason:
        return row, None
    bias = None
    if len(node.input) > 2 and node.input[2]:
        b = ctx.index.constant(node.input[2])
        if b is None or np.asarray(b).size != layer.M:
            row.reason = "the bias is not a constant [C] vector"
            return row, None
        bias = np.asarray(b, np.float64).reshape(-1)
    fusion = _depthwise_fusion(ctx, layer)
    if not all_finite(w, bias, fusion.scale, fusion.bias):
        row.reason = NONFINITE_REASON
        return row, None
    if node.input[0] not in sparse_out and fusion.output not in sparse_in:
        row.reason = "no sparse op next to it: onnxruntime's own depthwise kernel is kept"
        return row, None
    w, bias = fusion.apply(w, bias)
    if not all_finite(w, bias):
        row.reason = NONFINITE_REASON
        return row, None
    new, inits = pack.make_depthwise_node(
        layer.name, node.input[0], fusion.output, w, bias, strides=strides, pads=pads,
        activation=fusion.activation,
        clip_min=fusion.clip_min if fusion.activation == "clip" else None,
        clip_max=fusion.clip_max if fusion.activation == "clip" else None)
    row.decision = "depthwise"
    row.reason = "next to a sparse op: NCHW DepthwiseConv keeps the backbone in sparsekit ops"
    row.format, row.fused = "dense depthwise", fusion.describe()
    row.sparse_bytes = int(numpy_helper.to_array(inits[0]).nbytes)
    return row, Plan(new, inits, [node] + fusion.nodes, fusion, layer)
