"""inspect: a per-layer view of any model, dense or sparse: shape, sparsity, pattern, format, bytes.

Layers are the main graph's Conv / Gemm / MatMul with a constant weight (any dtype, in any
encoding weights.read_weights takes) and its ai.sparsekit ops (SparseConv, SparseGemm,
DepthwiseConv), in graph order; layers whose weight cannot be read are listed in ``skipped``.
The pattern comes from the zeros alone (detect.py); a recipe `prune` recorded only suggests the
bank size to try first.  Packed weights are unpacked to measure them; packed tensors that do not unpack (a
corrupt file) are reported as such rather than failing the whole table.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional

import numpy as np
import onnx

from . import pack
from .detect import detect
from .errors import SparsekitError
from .format import DOMAIN
from .graph import get_attr, node_names, prunable_layers, tensor_to_array
from .io import as_model
from .recipe import recorded_layers
from .weights import PRUNE_KINDS, read_weights, refused_layers


@dataclass
class LayerInfo:
    name: str
    op: str                     # Conv / Gemm / MatMul, or SparseConv / SparseGemm / DepthwiseConv
    shape: List[int]            # weight matrix [M, K]
    sparsity: float             # fraction of zero weights
    pattern: str                # what the zeros look like (detect.Pattern.describe)
    format: Optional[str]       # packed format for converted layers, None for dense ones
    bytes: int                  # bytes of the weight tensors as stored
    dense_bytes: int            # what the same weights take as dense float32
    block_1x4: bool = False     # every 4 consecutive output rows share their zeros
    bank_size: Optional[int] = None  # bank-balanced with this bank size (None: not balanced)
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class InspectReport:
    layers: List[LayerInfo] = field(default_factory=list)
    model_bytes: int = 0
    skipped: List[dict] = field(default_factory=list)   # {name, op, reason}: weight not readable
    notes: List[str] = field(default_factory=list)      # how weights were read (weights.py)

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
        return {"layers": [l.to_dict() for l in self.layers], "totals": self.totals,
                "skipped": list(self.skipped), "notes": list(self.notes)}


def inspect(model_or_path) -> InspectReport:
    src = as_model(model_or_path)
    report = InspectReport(model_bytes=src.ByteSize())
    model, report.notes = read_weights(src)   # the file's size is measured before
    inits = {t.name: t for t in model.graph.initializer}
    names = node_names(model.graph)
    recipe = recorded_layers(model)
    dense_by_index = {l.index: l for l in prunable_layers(model, names)}
    report.skipped = [r.row() for r in refused_layers(model, names, set(dense_by_index))
                      if r.kind in PRUNE_KINDS]
    for i, node in enumerate(model.graph.node):
        if i in dense_by_index:
            layer = dense_by_index[i]
            W = layer.matrix(model)
            nbytes = W.size * W.dtype.itemsize
            info = LayerInfo(layer.name, layer.op, [layer.M, layer.K],
                             float((W == 0).mean()) if W.size else 0.0, "", None, nbytes,
                             W.size * 4, dtype=W.dtype.name)
            if layer.depthwise:
                info.pattern = "depthwise"
            elif np.issubdtype(W.dtype, np.floating):
                entry = recipe.get(layer.name)
                hint = entry.get("bank_size") if isinstance(entry, dict) and \
                    entry.get("pattern") == "bank" else None
                _set_pattern(info, W, hint if isinstance(hint, int) else None)
            else:
                info.pattern = f"{W.dtype.name} weights"
            report.layers.append(info)
        elif node.domain == DOMAIN:
            report.layers.extend(_sparse_layers(node, names[i], inits))
    return report


def _set_pattern(info: LayerInfo, W: np.ndarray, prefer_bank: Optional[int] = None) -> None:
    p = detect(W, prefer_bank=prefer_bank)
    info.pattern = p.describe()
    info.block_1x4 = p.block_rows == 4 and p.kind in ("block", "bank")
    info.bank_size = p.bank_size if p.kind == "bank" else None


def _sparse_layers(node: onnx.NodeProto, name: str, inits: dict) -> List[LayerInfo]:
    """The layers of one sparsekit node: SparseConvDepthwise holds two (its 1x1 conv, then
    its depthwise conv, named NAME:1x1 and NAME:depthwise)."""
    if node.op_type == "SparseConvDepthwise":
        return [i for i in (_sparse_layer(node, f"{name}:1x1", inits),
                            _depthwise_layer(node, f"{name}:depthwise", inits, 6)) if i is not None]
    info = (_depthwise_layer(node, name, inits, 1) if node.op_type == "DepthwiseConv"
            else _sparse_layer(node, name, inits))
    return [info] if info is not None else []


def _input_array(node: onnx.NodeProto, inits: dict, pos: int) -> Optional[np.ndarray]:
    if len(node.input) > pos and node.input[pos] in inits:
        return tensor_to_array(inits[node.input[pos]])
    return None


def _depthwise_layer(node: onnx.NodeProto, name: str, inits: dict, pos: int) -> Optional[LayerInfo]:
    w = _input_array(node, inits, pos)
    if w is None or w.ndim != 4:
        return None
    return LayerInfo(name, "DepthwiseConv", [w.shape[0], int(np.prod(w.shape[1:]))],
                     float((w == 0).mean()) if w.size else 0.0, "depthwise",
                     "dense depthwise", w.nbytes, w.size * 4)


def _sparse_layer(node: onnx.NodeProto, name: str, inits: dict) -> Optional[LayerInfo]:
    if node.op_type not in ("SparseConv", "SparseGemm", "SparseConvDepthwise"):
        return None
    values, indices, group_ptr = (_input_array(node, inits, pos) for pos in (1, 2, 3))
    if values is None or indices is None:
        return None
    fmt = get_attr(node, "format", "bsr")
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    block = int(get_attr(node, "block", 4))
    bank_size = get_attr(node, "bank_size", None)
    if node.op_type in ("SparseConv", "SparseConvDepthwise"):
        ks = list(get_attr(node, "kernel_shape", [1, 1]))
        taps = int(np.prod(ks)) if ks else 1
        M = int(get_attr(node, "out_channels", 0))
        K = int(get_attr(node, "in_channels", 0)) * taps
    else:
        M, K = int(get_attr(node, "out_features", 0)), int(get_attr(node, "in_features", 0))
    packed = {"values": values, "indices": indices}
    if group_ptr is not None:
        packed["group_ptr"] = group_ptr
    nbytes = sum(a.nbytes for a in packed.values())
    label = f"{fmt} {'' if bank_size is None else str(bank_size) + ' '}1x{block}"
    op = "SparseConv" if node.op_type == "SparseConvDepthwise" else node.op_type
    info = LayerInfo(name, op, [M, K], 0.0, "", label, nbytes, M * K * 4)
    try:
        if M < 1 or K < 1:
            raise SparsekitError(f"out/in sizes {M}x{K}")
        W = pack.unpack(packed, M, K, fmt, block, bank_size)
    except (SparsekitError, ValueError, IndexError, KeyError, TypeError) as e:
        info.pattern = f"invalid packed weights ({str(e).splitlines()[0] if str(e) else e!r})"
        return info
    info.sparsity = float((W == 0).mean())
    _set_pattern(info, W, int(bank_size) if bank_size else None)
    return info
