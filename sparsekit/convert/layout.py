"""layout: chains of sparsekit ops kept in 8-channel blocks (NCHWc8) with one Reorder at each
chain edge (issue 20; docs/convert.md "Activation layout").

A chain is a connected set of converted ops that can run blocked: DepthwiseConv, and SparseConv
with a 1x1 kernel, stride 1, no pads and 1x4 blocks.  Tensors passed between two of them (the
activation input and the fused residual) stay blocked; a tensor entering the chain gets one
Reorder to NCHWc8, and a tensor leaving it (read by any other node, or a graph output) one
Reorder back to NCHW under its own name, so nothing outside the chain changes.  Which chains
go blocked: all ("NCHWc8"), none ("NCHW"), or those measured faster blocked than NCHW, each
chain alone in onnxruntime with its Reorders ("auto", as autotune does per layer).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper

from .. import format, pack
from ..errors import SparsekitError
from ..graph import get_attr
from ..sessions import time_pair

__all__ = ["LAYOUT_CHOICES", "Chain", "find_chains", "apply_layouts", "check_layout"]

LAYOUT_CHOICES = ("auto", "NCHW", "NCHWc8")
BLOCKED = "NCHWc8"
_RESIDUAL = 5            # SparseConv's residual input (X, values, indices, group_ptr, bias, R)


@dataclass
class Chain:
    nodes: List[str]                      # node names, in graph order
    inputs: List[str]                     # NCHW tensors the chain reads from outside
    outputs: List[str]                    # tensors read outside the chain (or graph outputs)
    layout: str = "NCHW"
    reason: str = ""
    nchw_ms: Optional[float] = None
    blocked_ms: Optional[float] = None
    index: List[int] = field(default_factory=list, repr=False)   # positions in graph.node

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("index")
        return d


def check_layout(layout: Optional[str]) -> Optional[str]:
    if layout is not None and layout not in LAYOUT_CHOICES:
        raise SparsekitError(f"layout must be one of {', '.join(LAYOUT_CHOICES)}, got {layout!r}")
    return layout


def _blockable(node: onnx.NodeProto) -> bool:
    if node.domain != format.DOMAIN:
        return False
    if node.op_type == "DepthwiseConv":
        return True
    return (node.op_type == "SparseConv"
            and list(get_attr(node, "kernel_shape", [])) == [1, 1]
            and list(get_attr(node, "strides", [1, 1])) == [1, 1]
            and not any(get_attr(node, "pads", [0, 0, 0, 0]))
            and int(get_attr(node, "block", 0)) == 4)


def _activation_inputs(node: onnx.NodeProto) -> List[int]:
    """Positions of the inputs that carry activations (blocked inside a chain)."""
    extra = ([_RESIDUAL] if node.op_type == "SparseConv" and len(node.input) > _RESIDUAL
             and node.input[_RESIDUAL] else [])
    return [0] + extra


def find_chains(model: onnx.ModelProto) -> List[Chain]:
    """The connected groups of blockable ops, linked by the activations they pass each other."""
    nodes = model.graph.node
    members = [i for i, n in enumerate(nodes) if _blockable(n)]
    producer = {nodes[i].output[0]: i for i in members}
    parent = {i: i for i in members}

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in members:
        for k in _activation_inputs(nodes[i]):
            j = producer.get(nodes[i].input[k])
            if j is not None:
                parent[root(i)] = root(j)
    groups: Dict[int, List[int]] = {}
    for i in members:
        groups.setdefault(root(i), []).append(i)

    readers: Dict[str, List[int]] = {}
    for j, n in enumerate(nodes):
        for x in n.input:
            readers.setdefault(x, []).append(j)
    graph_outputs = {o.name for o in model.graph.output}
    chains = []
    for idx in groups.values():
        inside = set(idx)
        produced = {nodes[i].output[0] for i in idx}
        inputs, outputs = [], []
        for i in idx:
            for k in _activation_inputs(nodes[i]):
                x = nodes[i].input[k]
                if x not in produced and x not in inputs:
                    inputs.append(x)
            y = nodes[i].output[0]
            if y in graph_outputs or any(j not in inside for j in readers.get(y, [])):
                outputs.append(y)
        chains.append(Chain([nodes[i].name for i in idx], inputs, outputs, index=idx))
    return chains


def _channels(model: onnx.ModelProto, node: onnx.NodeProto) -> int:
    """Output channels of a blockable node (the real lanes of its blocked output)."""
    if node.op_type == "SparseConv":
        return int(get_attr(node, "out_channels"))
    for t in model.graph.initializer:          # DepthwiseConv: weight [C, 1, k, k]
        if t.name == node.input[1]:
            return int(t.dims[0])
    raise SparsekitError(f"DepthwiseConv {node.name!r}: its weight is not an initializer")


def _unique(name: str, taken: set) -> str:
    out, n = name, 1
    while out in taken:
        n += 1
        out = f"{name}.{n}"
    taken.add(out)
    return out


def _block_nodes(model: onnx.ModelProto, chain: Chain, taken: set) -> List[onnx.NodeProto]:
    """The chain's nodes in NCHWc8 with their Reorders, in an order that runs: a Reorder in
    before the first node reading its tensor, a Reorder out right after its producer."""
    nodes = model.graph.node
    blocked = {}                 # NCHW name -> blocked name
    for x in chain.inputs:
        blocked[x] = _unique(f"{x}.nchwc8", taken)
    for i in chain.index:
        y = nodes[i].output[0]
        blocked[y] = _unique(f"{y}.nchwc8", taken)
    out: List[onnx.NodeProto] = []
    done_in = set()
    for i in chain.index:
        node = copy.deepcopy(nodes[i])
        for k in _activation_inputs(node):
            x = node.input[k]
            if x in chain.inputs and x not in done_in:
                done_in.add(x)
                out.append(pack.make_reorder_node(_unique(f"{x}.to_nchwc8", taken), x,
                                                  blocked[x], BLOCKED)[0])
            node.input[k] = blocked[x]
        y = node.output[0]
        node.output[0] = blocked[y]
        kept = [a for a in node.attribute if a.name != "layout"]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute("layout", BLOCKED)])
        out.append(node)
        if y in chain.outputs:
            out.append(pack.make_reorder_node(_unique(f"{y}.to_nchw", taken), blocked[y], y,
                                              "NCHW", channels=_channels(model, nodes[i]))[0])
    return out


def _rewrite(model: onnx.ModelProto, chains: List[Chain]) -> None:
    """Replace the nodes of every chain whose layout is NCHWc8 (in place)."""
    nodes = model.graph.node
    taken = _names(model)
    new_at: Dict[int, List[onnx.NodeProto]] = {}
    drop = set()
    for c in chains:
        if c.layout == BLOCKED:
            new_at[c.index[0]] = _block_nodes(model, c, taken)
            drop.update(c.index)
    if not drop:
        return
    merged = []
    for i, n in enumerate(nodes):
        merged.extend(new_at.get(i, []))
        if i not in drop:
            merged.append(n)
    del model.graph.node[:]
    model.graph.node.extend(_topological(merged))
    # tensors that now exist only blocked, under new names, lose their NCHW value_info
    live = {x for n in model.graph.node for x in n.output}
    kept = [v for v in model.graph.value_info if v.name in live]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


def _names(model: onnx.ModelProto) -> set:
    g = model.graph
    return ({x for n in g.node for x in list(n.input) + list(n.output)} | {n.name for n in g.node}
            | {t.name for t in g.initializer} | {i.name for i in g.input})


def _topological(nodes: List[onnx.NodeProto]) -> List[onnx.NodeProto]:
    """The nodes with each one after the producers of its inputs, in the given order where
    that already holds.  A chain's nodes were put where its first node was, and one of its
    inputs (a residual from a branch, an input made between two of its nodes) may be made
    later in the graph."""
    made_here = {x for n in nodes for x in n.output}
    ready: set = set()
    out: List[onnx.NodeProto] = []
    waiting: List[onnx.NodeProto] = []
    for n in nodes:
        waiting.append(n)
        moved = True
        while moved:
            moved = False
            for w in list(waiting):
                if all(x in ready or x not in made_here for x in w.input):
                    out.append(w)
                    ready.update(w.output)
                    waiting.remove(w)
                    moved = True
    if waiting:
        raise RuntimeError("layout: the rewritten graph has a cycle (a sparsekit bug)")
    return out


def _chain_models(model: onnx.ModelProto, chain: Chain, shapes, dims: Dict[str, int]):
    """(NCHW model, blocked model, feeds): the chain alone, both ways, on random inputs."""
    rng = np.random.default_rng(0)
    feeds = {}
    for x in chain.inputs:
        d = shapes.get(x)
        if not d or any(not (isinstance(v, str) and v) and not (isinstance(v, int) and v > 0)
                        for v in d):
            raise SparsekitError(f"the shape of {x!r} is unknown")
        feeds[x] = rng.standard_normal([v if isinstance(v, int) else dims.get(v, 1)
                                        for v in d]).astype(np.float32)
    nodes = model.graph.node
    plain = [copy.deepcopy(nodes[i]) for i in chain.index]
    blocked = _block_nodes(model, chain, _names(model))
    inits = {t.name: t for t in model.graph.initializer}
    used = list({x: inits[x] for n in plain for x in n.input if x in inits}.values())
    opsets = [o for o in model.opset_import if o.domain != format.DOMAIN] + [format.opset_import()]

    def build(ns):
        g = helper.make_graph(
            ns, "chain",
            [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, list(v.shape))
             for k, v in feeds.items()],
            [helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, None)
             for y in chain.outputs], used)
        return helper.make_model(g, opset_imports=opsets, ir_version=model.ir_version)

    return build(plain), build(blocked), feeds


def apply_layouts(model: onnx.ModelProto, layout: str, shapes, *, threads: Optional[int] = None,
                  dims: Optional[Dict[str, int]] = None) -> List[Chain]:
    """Choose each chain's layout (module docstring) and rewrite ``model`` in place.
    ``shapes``: tensor name -> dims of the model before conversion (chain inputs keep their
    names), used to time chains alone."""
    chains = find_chains(model)
    for c in chains:
        if layout == "NCHW":
            c.reason = "layout NCHW"
        elif layout == BLOCKED:
            c.layout, c.reason = BLOCKED, "layout NCHWc8"
        else:
            _measure(model, c, shapes, threads, dims or {})
    _rewrite(model, chains)
    return chains


def _measure(model, chain: Chain, shapes, threads, dims) -> None:
    try:
        plain, blocked, feeds = _chain_models(model, chain, shapes, dims)
        chain.nchw_ms, chain.blocked_ms = time_pair(plain, blocked, feeds, threads,
                                                    base_custom_ops=True)
    except Exception as e:  # a chain we cannot time stays NCHW, the layout known to work
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        chain.reason = f"could not time the chain ({msg[:200]}); NCHW kept"
        return
    if chain.blocked_ms < chain.nchw_ms:
        chain.layout = BLOCKED
        chain.reason = "timed: NCHWc8 faster"
    else:
        chain.reason = "timed: NCHW as fast or faster"
