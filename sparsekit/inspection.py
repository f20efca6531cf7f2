"""inspect: a per-layer view of any model, dense or sparse: shape, sparsity, pattern, format, bytes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from . import pack
from .detect import detect
from .graph import get_attr, node_names, prunable_layers
from .io import as_model


@dataclass
class LayerInfo:
    name: str
    op: str                     # Conv / Gemm / MatMul, or SparseConv / SparseGemm / DepthwiseConv
    shape: List[int]            # weight matrix [M, K]
    sparsity: float
    pattern: str
    format: Optional[str]       # packed format for converted layers, None for dense ones
    bytes: int                  # bytes of the weight tensors as stored
    dense_bytes: int            # what the same weights take as dense float32

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class InspectReport:
    layers: List[LayerInfo] = field(default_factory=list)
    model_bytes: int = 0

    @property
    def totals(self) -> dict:
        params = sum(l.shape[0] * l.shape[1] for l in self.layers)
        zeros = sum(l.sparsity * l.shape[0] * l.shape[1] for l in self.layers)
        return {"layers": len(self.layers),
                "converted": sum(l.format is not None for l in self.layers),
                "params": params, "sparsity": zeros / params if params else 0.0,
                "weight_bytes": sum(l.bytes for l in self.layers),
                "dense_weight_bytes": sum(l.dense_bytes for l in self.layers),
                "model_bytes": self.model_bytes}

    def to_dict(self) -> dict:
        return {"layers": [l.to_dict() for l in self.layers], "totals": self.totals}


def inspect(model_or_path) -> InspectReport:
    model = as_model(model_or_path)
    inits = {t.name: t for t in model.graph.initializer}
    report = InspectReport(model_bytes=model.ByteSize())
    names = node_names(model.graph)
    dense_by_index = {l.index: l for l in prunable_layers(model)}
    for i, node in enumerate(model.graph.node):
        if i in dense_by_index:
            layer = dense_by_index[i]
            W = layer.matrix(model)
            nbytes = W.size * W.dtype.itemsize
            if layer.depthwise:
                pattern = "depthwise"
            elif np.issubdtype(W.dtype, np.floating):
                pattern = detect(W).describe()
            else:
                pattern = f"{W.dtype.name} weights"
            report.layers.append(LayerInfo(layer.name, layer.op, [layer.M, layer.K],
                                           float((W == 0).mean()), pattern, None, nbytes,
                                           W.size * 4))
        elif node.domain == pack.DOMAIN:
            info = _sparse_layer(node, names[i], inits)
            if info is not None:
                report.layers.append(info)
    return report


def _sparse_layer(node: onnx.NodeProto, name: str, inits: dict) -> Optional[LayerInfo]:
    def tensor(pos):
        if len(node.input) > pos and node.input[pos] in inits:
            return numpy_helper.to_array(inits[node.input[pos]])
        return None

    if node.op_type == "DepthwiseConv":
        w = tensor(1)
        if w is None:
            return None
        return LayerInfo(name, node.op_type, [w.shape[0], int(np.prod(w.shape[1:]))],
                         float((w == 0).mean()), "depthwise", "dense depthwise", w.nbytes,
                         w.size * 4)
    if node.op_type not in ("SparseConv", "SparseGemm"):
        return None
    values, indices, group_ptr = tensor(1), tensor(2), tensor(3)
    if values is None or indices is None:
        return None
    fmt = get_attr(node, "format", b"bsr")
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    block = int(get_attr(node, "block", 4))
    bank_size = get_attr(node, "bank_size", None)
    if node.op_type == "SparseConv":
        kh, kw = get_attr(node, "kernel_shape", [1, 1])
        M, K = int(get_attr(node, "out_channels", 0)), int(get_attr(node, "in_channels", 0)) * kh * kw
    else:
        M, K = int(get_attr(node, "out_features", 0)), int(get_attr(node, "in_features", 0))
    packed = {"values": values, "indices": indices}
    if group_ptr is not None:
        packed["group_ptr"] = group_ptr
    W = pack.unpack(packed, M, K, fmt, block, bank_size)
    nbytes = sum(a.nbytes for a in packed.values())
    label = f"{fmt} {'' if bank_size is None else str(bank_size) + ' '}1x{block}"
    return LayerInfo(name, node.op_type, [M, K], float((W == 0).mean()), detect(W).describe(),
                     label, nbytes, M * K * 4)
