"""What follows a Conv/Gemm/MatMul that the sparse op can absorb: bias, BatchNormalization,
activation, residual Add.

The sparse ops compute  y = act(W·x + bias [+ residual])  or  act(W·x + bias) + residual,
so a chain  node -> [Add const | BatchNormalization]* -> [Add tensor] -> [Relu | Clip]
-> [Add tensor]  (at most one residual) collapses into one op: constant Adds become bias, a
BatchNormalization scales the weight rows and shifts the bias.  Only intermediates with a single
consumer that are not graph outputs are fused, so no value anyone else reads disappears.  Every
absorbed node must leave the output's shape unchanged (no broadcasting to a larger shape).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import onnx

from .graph import ONNX_DOMAINS, constant_node_value, consumer_map, get_attr, tensor_to_array


@dataclass
class Fusion:
    """The epilogue absorbed into a sparse op, and the nodes it replaces.

    The fused op computes  act(scale ⊙ (W·x + own_bias) + bias [+ residual])  (or the residual
    added after act): apply `scale` to the weight rows and the op's own bias, then add `bias`.
    """
    scale: Optional[np.ndarray] = None       # [M] float64, from BatchNormalization
    bias: Optional[np.ndarray] = None        # [M] float64, added after the scale
    activation: str = "none"                 # "none" | "relu" | "clip"
    clip_min: float = float("-inf")
    clip_max: float = float("inf")
    residual: Optional[str] = None           # tensor name added to the output
    residual_after_act: bool = False
    nodes: List[onnx.NodeProto] = field(default_factory=list)  # absorbed nodes, in order
    output: str = ""                         # the tensor the fused op must produce
    steps: List[str] = field(default_factory=list)  # what was absorbed, in order

    def describe(self) -> str:
        return "+".join(self.steps)

    def apply(self, weight_rows: np.ndarray, own_bias: Optional[np.ndarray]):
        """(weight, bias) of the fused op: `weight_rows` has the M output rows on axis 0."""
        W = np.asarray(weight_rows, dtype=np.float32)
        bias = None if own_bias is None else np.asarray(own_bias, dtype=np.float64)
        if self.scale is not None:
            s = self.scale.reshape((-1,) + (1,) * (W.ndim - 1))
            W = (W.astype(np.float64) * s).astype(np.float32)
            if bias is not None:
                bias = bias * self.scale
        if self.bias is not None:
            bias = self.bias if bias is None else bias + self.bias
        return W, None if bias is None else bias.astype(np.float32)


class GraphIndex:
    """Consumers, constants and graph outputs of one graph, for fusion decisions.

    Consumers include nodes whose subgraphs (If/Loop/Scan bodies) read a tensor, so a value used
    inside a subgraph never counts as having a single consumer.
    """

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.initializers: Dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.constants: Dict[str, np.ndarray] = {}
        for n in g.node:  # Constant nodes count as constants too (exporters emit them)
            if n.op_type == "Constant" and n.domain in ONNX_DOMAINS and n.output:
                v = constant_node_value(n)
                if v is not None:
                    self.constants[n.output[0]] = v
        self.uses: Dict[str, int] = {}           # tensor -> number of reading slots
        for n in g.node:
            for name in n.input:
                if name:
                    self.uses[name] = self.uses.get(name, 0) + 1
        self.consumers: Dict[str, List[onnx.NodeProto]] = {
            k: [n for _, n in v] for k, v in consumer_map(g).items()}
        self.graph_outputs = {o.name for o in g.output}

    def constant(self, name: str) -> Optional[np.ndarray]:
        if name in self.initializers:
            return tensor_to_array(self.initializers[name])
        return self.constants.get(name)

    def sole_consumer(self, name: str) -> Optional[onnx.NodeProto]:
        """The one node reading `name` through exactly one input slot, else None."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or self.uses.get(name, 0) != 1 or name in self.graph_outputs:
            return None
        return users[0]


def _channel_vector(value: np.ndarray, M: int, channel_axis_from_end: int,
                    out_rank: Optional[int]) -> Optional[np.ndarray]:
    """A constant that broadcasts as a per-output-channel vector of length M, else None.

    It must not raise the output's rank (a rank it cannot exceed is `out_rank`; unknown: 1).
    """
    v = np.asarray(value)
    if v.dtype.kind != "f":
        return None
    max_rank = out_rank if out_rank is not None else 1
    if v.ndim > max_rank:
        return None
    v = v.astype(np.float64)
    if v.size == 1:
        return np.full(M, float(v.reshape(-1)[0]))
    shape = list(v.shape)
    if len(shape) < channel_axis_from_end or shape[-channel_axis_from_end] != M:
        return None
    if any(d != 1 for i, d in enumerate(shape) if i != len(shape) - channel_axis_from_end):
        return None
    return v.reshape(-1)


def _bn_affine(index: GraphIndex, bn: onnx.NodeProto, cur: str, M: int):
    """(scale, shift) of an inference-mode BatchNormalization with constant parameters, or None."""
    if len(bn.input) < 5 or bn.input[0] != cur or list(bn.input).count(cur) != 1:
        return None
    if int(get_attr(bn, "training_mode", 0)) or int(get_attr(bn, "spatial", 1)) != 1:
        return None
    if any(o for o in bn.output[1:]):
        return None
    params = [index.constant(x) for x in bn.input[1:5]]
    if any(p is None or np.asarray(p).dtype.kind != "f" or np.asarray(p).shape != (M,)
           for p in params):
        return None
    scale, beta, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
    s = scale / np.sqrt(var + float(get_attr(bn, "epsilon", 1e-5)))
    return s, beta - mean * s


def plan_fusion(index: GraphIndex, node: onnx.NodeProto, M: int, is_conv: bool,
                y_shape: Optional[list], shapes: Dict[str, list],
                claimed: frozenset = frozenset(), *, out_rank: Optional[int] = None,
                allow_residual: bool = True) -> Fusion:
    """Walk the single-consumer chain after `node` and absorb what the sparse op can compute.

    Order accepted:  [Add const | BatchNormalization]* -> [Add residual] -> [Relu|Clip]
    -> [Add residual], with at most one residual.  `y_shape` is the op output's shape when known;
    a residual must have exactly that shape, every dim a number or a named symbol (no
    broadcasting: the kernels also check it at run time).  `out_rank` is the output's rank (4 for
    Conv; None when unknown).  A BatchNormalization is absorbed when its channel axis (1) is the
    output-feature axis: always for Conv, for Gemm/MatMul only with rank-2 outputs.  Nodes whose
    first output is in `claimed` already belong to another op's epilogue and end the walk.
    """
    f = Fusion(output=node.output[0])
    if is_conv:
        out_rank = 4
    # Conv output is [N, M, H, W]: channel axis is 3rd from the end; Gemm/MatMul: last.
    channel_axis = 3 if is_conv else 1
    bn_ok = is_conv or out_rank == 2
    residual_ok = allow_residual and y_shape is not None and len(y_shape) > 0 and \
        all((isinstance(d, int) and d > 0) or (isinstance(d, str) and d) for d in y_shape)
    state = "bias"
    cur = node.output[0]
    while True:
        nxt = index.sole_consumer(cur)
        if nxt is None or nxt.domain not in ONNX_DOMAINS or not nxt.output or \
                nxt.output[0] in claimed or any(o for o in nxt.output[1:] if o):
            break
        step = None
        if nxt.op_type == "Add" and len(nxt.input) == 2:
            other = nxt.input[1] if nxt.input[0] == cur else nxt.input[0]
            if other == cur or not other:
                break
            const = index.constant(other)
            if const is not None:
                if state != "bias":
                    break
                vec = _channel_vector(const, M, channel_axis, out_rank)
                if vec is None:
                    break
                f.bias = vec if f.bias is None else f.bias + vec
                step = "bias"
            elif f.residual is None and state in ("bias", "act") and residual_ok \
                    and shapes.get(other) == list(y_shape):
                f.residual = other
                f.residual_after_act = state == "act"
                state = "done" if state == "act" else "residual"
                step = "residual"
            else:
                break
        elif nxt.op_type == "BatchNormalization" and state == "bias" and bn_ok:
            affine = _bn_affine(index, nxt, cur, M)
            if affine is None:
                break
            s, t = affine
            f.scale = s if f.scale is None else f.scale * s
            f.bias = t if f.bias is None else f.bias * s + t
            step = "batchnorm"
        elif nxt.op_type == "Relu" and state in ("bias", "residual"):
            f.activation, f.clip_min, f.clip_max = "relu", 0.0, float("inf")
            state = "act"
            step = "relu"
        elif nxt.op_type == "Clip" and state in ("bias", "residual"):
            lo, hi = _clip_bounds(index, nxt)
            if lo is None:
                break
            f.activation, f.clip_min, f.clip_max = "clip", lo, hi
            state = "act"
            step = "clip"
        else:
            break
        f.nodes.append(nxt)
        f.steps.append(step)
        f.output = nxt.output[0]
        cur = nxt.output[0]
        if state == "done":
            break
    return f


def _clip_bounds(index: GraphIndex, clip: onnx.NodeProto):
    """Clip's constant (min, max) from inputs (opset >= 11) or attributes (opset < 11).

    (None, None) when a bound is dynamic, not a scalar, NaN, or min > max (ONNX then outputs max
    everywhere, which the kernels' clamp does not do).
    """
    lo, hi = float("-inf"), float("inf")
    for a in clip.attribute:
        if a.name == "min":
            lo = float(a.f)
        elif a.name == "max":
            hi = float(a.f)
    for pos in (1, 2):
        if len(clip.input) > pos and clip.input[pos]:
            v = index.constant(clip.input[pos])
            if v is None or np.asarray(v).size != 1:
                return None, None
            x = float(np.asarray(v).reshape(-1)[0])
            if pos == 1:
                lo = x
            else:
                hi = x
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        return None, None
    return lo, hi
