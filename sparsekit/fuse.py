"""What follows a Conv/Gemm/MatMul that the sparse op can absorb: bias, activation, residual Add.

The sparse ops compute  y = act(W·x + bias [+ residual])  or  act(W·x + bias) + residual,
so a chain  node -> Add(const) -> Add(tensor) -> Relu|Clip  (in the orders a graph allows)
collapses into one op.  Only single-consumer intermediates that are not graph outputs are
fused, so no value anyone else reads disappears.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass
class Fusion:
    """The epilogue absorbed into a sparse op, and the nodes it replaces."""
    bias: Optional[np.ndarray] = None        # [M] float32, added to the op's own bias
    activation: str = "none"                 # "none" | "relu" | "clip"
    clip_min: float = float("-inf")
    clip_max: float = float("inf")
    residual: Optional[str] = None           # tensor name added to the output
    residual_after_act: bool = False
    nodes: List[onnx.NodeProto] = field(default_factory=list)  # absorbed nodes, in order
    output: str = ""                         # the tensor the fused op must produce

    def describe(self) -> str:
        parts = []
        if self.bias is not None:
            parts.append("bias")
        if self.residual and not self.residual_after_act:
            parts.append("residual")
        if self.activation != "none":
            parts.append(self.activation)
        if self.residual and self.residual_after_act:
            parts.append("residual")
        return "+".join(parts)


class GraphIndex:
    """Producers, consumers, constants and graph outputs of one graph, for fusion decisions."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.initializers: Dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.constants: Dict[str, np.ndarray] = {}
        for n in g.node:  # Constant nodes count as constants too (exporters emit them)
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.constants[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.consumers: Dict[str, List[onnx.NodeProto]] = {}
        for n in g.node:
            for name in n.input:
                if name:
                    self.consumers.setdefault(name, []).append(n)
        self.graph_outputs = {o.name for o in g.output}

    def constant(self, name: str) -> Optional[np.ndarray]:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        return self.constants.get(name)

    def sole_consumer(self, name: str) -> Optional[onnx.NodeProto]:
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.graph_outputs:
            return None
        return users[0]


def _channel_vector(value: np.ndarray, M: int, channel_axis_from_end: int) -> Optional[np.ndarray]:
    """A constant that broadcasts as a per-output-channel vector of length M, else None."""
    v = np.asarray(value, dtype=np.float64)
    if v.size == 1:
        return np.full(M, float(v.reshape(-1)[0]), np.float32)
    shape = list(v.shape)
    if len(shape) < channel_axis_from_end or shape[-channel_axis_from_end] != M:
        return None
    if any(d != 1 for i, d in enumerate(shape) if i != len(shape) - channel_axis_from_end):
        return None
    return v.reshape(-1).astype(np.float32)


def plan_fusion(index: GraphIndex, node: onnx.NodeProto, M: int, is_conv: bool,
                y_shape: Optional[list], shapes: Dict[str, list],
                claimed: frozenset = frozenset()) -> Fusion:
    """Walk the single-consumer chain after `node` and absorb what the sparse op can compute.

    Order accepted:  [Add const]* -> [Add residual] -> [Relu|Clip] -> [Add residual]  with at
    most one residual.  `y_shape` is the op output's shape when known; a residual must have
    exactly that shape (no broadcasting inside the kernel).  Nodes whose first output is in
    `claimed` already belong to another op's epilogue and end the walk.
    """
    f = Fusion(output=node.output[0])
    # Conv output is [N, M, H, W]: channel axis is 3rd from the end; Gemm/MatMul: last.
    channel_axis = 3 if is_conv else 1
    state = "bias"
    cur = node.output[0]
    while True:
        nxt = index.sole_consumer(cur)
        if nxt is None or nxt.domain not in ("", "ai.onnx") or nxt.output[0] in claimed:
            break
        if nxt.op_type == "Add" and len(nxt.input) == 2:
            other = nxt.input[1] if nxt.input[0] == cur else nxt.input[0]
            const = index.constant(other)
            if const is not None and state == "bias":
                vec = _channel_vector(const, M, channel_axis)
                if vec is None:
                    break
                f.bias = vec if f.bias is None else f.bias + vec
            elif const is None and f.residual is None and state in ("bias", "act") \
                    and y_shape is not None and shapes.get(other) == y_shape \
                    and all(isinstance(d, int) and d > 0 for d in y_shape):
                f.residual = other
                f.residual_after_act = state == "act"
                state = "done" if state == "act" else "residual"
            else:
                break
        elif nxt.op_type == "Relu" and state in ("bias", "residual"):
            f.activation, f.clip_min, f.clip_max = "relu", 0.0, float("inf")
            state = "act"
        elif nxt.op_type == "Clip" and state in ("bias", "residual"):
            lo, hi = _clip_bounds(index, nxt)
            if lo is None:
                break
            f.activation, f.clip_min, f.clip_max = "clip", lo, hi
            state = "act"
        else:
            break
        f.nodes.append(nxt)
        f.output = nxt.output[0]
        cur = nxt.output[0]
        if state == "done":
            break
    return f


def _clip_bounds(index: GraphIndex, clip: onnx.NodeProto):
    """Clip's constant (min, max) from inputs (opset >= 11) or attributes; (None, None) if dynamic."""
    lo, hi = float("-inf"), float("inf")
    for a in clip.attribute:
        if a.name == "min":
            lo = a.f
        elif a.name == "max":
            hi = a.f
    for pos, name in ((1, "min"), (2, "max")):
        if len(clip.input) > pos and clip.input[pos]:
            v = index.constant(clip.input[pos])
            if v is None or np.asarray(v).size != 1:
                return None, None
            if name == "min":
                lo = float(np.asarray(v).reshape(-1)[0])
            else:
                hi = float(np.asarray(v).reshape(-1)[0])
    return lo, hi
