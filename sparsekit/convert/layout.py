"""layout: chains of sparsekit ops kept in 8-channel blocks (NCHWc8) with one Reorder at each
chain edge (issue 20; docs/convert.md "Activation layout").

A chain is a connected set of converted ops that can run blocked: DepthwiseConv, and SparseConv
with a 1x1 kernel, stride 1, no pads and 1x4 blocks.  Tensors passed between two of them (the
activation input and the fused residual) stay blocked; a tensor leaving the chain (read by any
other node, or a graph output) gets one Reorder back to NCHW under its own name, so nothing
outside the chain changes.  A tensor entering the chain gets a Reorder to NCHWc8, unless the
conv that makes it can write blocks itself (its head): a SparseConv of any geometry (1x4, no
residual), or a plain Conv (+ Relu / Clip) such as the network's stem, which becomes a
SparseConv with its dense weights in 1x4 blocks, reading NCHW and writing NCHWc8
(input_layout = "NCHW").  Either way the tensor is read by chain ops only.  An output read
only by a GlobalAveragePool (a classifier's pooling) leaves through a Reorder that pools
(pool = "global_average") and replaces that node: the NCHW tensor is never written.  Which chains
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
from ..format import conv_geometry_problem
from ..graph import get_attr, tensor_to_array
from ..sessions import time_pair

__all__ = ["LAYOUT_CHOICES", "Chain", "find_chains", "apply_layouts", "check_layout"]

LAYOUT_CHOICES = ("auto", "NCHW", "NCHWc8")
BLOCKED = "NCHWc8"
_RESIDUAL = 5            # SparseConv's residual input (X, values, indices, group_ptr, bias, R)
# A dense Conv becomes a chain's head only with a short reduction (C*kh*kw, as a stem's 3*3*3):
# its weights run through the sparse kernel at density 1, which onnxruntime's dense convs beat
# on large layers (the blocked chain is timed with it under "auto"; NCHWc8 takes it as is).
DENSE_HEAD_MAX_K = 256
# An expansion is merged with its depthwise conv on planes of at least this many pixels: there
# the expanded tensor leaves the caches between the two ops (pairs alone, 85% 1x4, 1 thread:
# 96x112x112 1.5x faster merged, 144x56x56 stride 2 1.4x, 192x28x28 1.05-1.1x); smaller planes
# fit in L2 anyway, and one band per image would leave the second thread idle.
FUSE_MIN_PIXELS = 28 * 28


@dataclass
class Chain:
    nodes: List[str]                      # node names, in graph order
    inputs: List[str]                     # NCHW tensors the chain reads from outside
    outputs: List[str]                    # tensors read outside the chain (or graph outputs)
    layout: str = "NCHW"
    reason: str = ""
    nchw_ms: Optional[float] = None
    blocked_ms: Optional[float] = None
    heads: Dict[str, str] = field(default_factory=dict)   # input -> conv that writes it blocked
    index: List[int] = field(default_factory=list, repr=False)   # positions in graph.node
    # input -> (positions of the nodes its head replaces, the head node, its initializers)
    head_plans: Dict[str, tuple] = field(default_factory=dict, repr=False)
    # output -> the GlobalAveragePool that alone reads it, fused into its Reorder
    pools: Dict[str, str] = field(default_factory=dict)
    pool_index: Dict[str, int] = field(default_factory=dict, repr=False)
    # expansions merged with their depthwise conv (SparseConvDepthwise nodes), and the plane
    # (H*W pixels) of each chain node's output where the shapes are known
    fused: List[str] = field(default_factory=list)
    planes: Dict[str, int] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("index")
        d.pop("head_plans")
        d.pop("pool_index")
        d.pop("planes")
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

    readers = _readers(nodes)
    graph_outputs = {o.name for o in model.graph.output}
    taken = _names(model)
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
        chain = Chain([nodes[i].name for i in idx], inputs, outputs, index=idx)
        for y in outputs:
            outside = [j for j in readers.get(y, []) if j not in inside]
            if y not in graph_outputs and len(outside) == 1 and _global_average(nodes[outside[0]]):
                chain.pools[y] = nodes[outside[0]].name
                chain.pool_index[y] = outside[0]
        for x in inputs:
            if x in graph_outputs or any(j not in inside for j in readers.get(x, [])):
                continue  # read outside the chain too: it stays NCHW, with a Reorder
            plan = _head(model, x, readers, taken)
            if plan is not None:
                chain.head_plans[x] = plan
                chain.heads[x] = model.graph.node[plan[0][0]].name
        chains.append(chain)
    return chains


def _readers(nodes) -> Dict[str, List[int]]:
    """Tensor name -> positions of the nodes that read it."""
    readers: Dict[str, List[int]] = {}
    for j, n in enumerate(nodes):
        for x in n.input:
            readers.setdefault(x, []).append(j)
    return readers


def _text(node: onnx.NodeProto, name: str, default: str) -> str:
    v = get_attr(node, name, default)
    return v.decode() if isinstance(v, bytes) else v


def _global_average(node: onnx.NodeProto) -> bool:
    return node.op_type == "GlobalAveragePool" and node.domain in ("", "ai.onnx")


def _head(model: onnx.ModelProto, x: str, readers: Dict[str, List[int]], taken: set):
    """The conv that makes ``x`` rewritten to write it in blocks (module docstring), or None:
    (positions of the nodes it replaces, the new SparseConv, its initializers)."""
    nodes = model.graph.node
    made = {o: j for j, n in enumerate(nodes) for o in n.output}
    j = made.get(x)
    if j is None:
        return None
    node = nodes[j]
    if node.domain == format.DOMAIN:
        if (node.op_type != "SparseConv" or int(get_attr(node, "block", 0)) != 4
                or any(a.name in ("layout", "input_layout") for a in node.attribute)
                or (len(node.input) > _RESIDUAL and node.input[_RESIDUAL])):
            return None
        head = copy.deepcopy(node)
        head.attribute.extend([helper.make_attribute("layout", BLOCKED),
                               helper.make_attribute("input_layout", "NCHW")])
        return [j], head, []
    act, lo, hi, conv_j = "none", None, None, j
    inits = {t.name: t for t in model.graph.initializer}
    if node.op_type in ("Relu", "Clip") and node.domain in ("", "ai.onnx"):
        if node.op_type == "Clip":
            try:
                bounds = _clip_bounds(node, inits)
            except SparsekitError:
                bounds = None
            if bounds is None:
                return None
            act, (lo, hi) = "clip", bounds
        else:
            act = "relu"
        conv_j = made.get(node.input[0])
        if conv_j is None or readers.get(node.input[0]) != [j]:
            return None
    conv = nodes[conv_j]
    if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.input) < 2:
        return None
    try:
        return _dense_head(conv, conv_j, j, x, inits, act, lo, hi, taken)
    except SparsekitError:  # weights we cannot read here (external data not loaded)
        return None


def _dense_head(conv, conv_j: int, j: int, x: str, inits, act: str, lo, hi, taken: set):
    w_t = inits.get(conv.input[1])
    b_t = inits.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    if (w_t is None or w_t.data_type != onnx.TensorProto.FLOAT or len(w_t.dims) != 4
            or int(get_attr(conv, "group", 1)) != 1
            or get_attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or (len(conv.input) > 2 and conv.input[2] and b_t is None)):
        return None
    strides = list(get_attr(conv, "strides", [1, 1]))
    pads = list(get_attr(conv, "pads", [0, 0, 0, 0]))
    dilations = list(get_attr(conv, "dilations", [1, 1]))
    _, C, kh, kw = (int(d) for d in w_t.dims)
    if (C * kh * kw > DENSE_HEAD_MAX_K or len(strides) != 2 or len(pads) != 4
            or len(dilations) != 2 or conv_geometry_problem([kh, kw], strides, dilations, pads)):
        return None
    w = tensor_to_array(w_t)
    bias = None if b_t is None else tensor_to_array(b_t).astype(np.float32).reshape(-1)
    if not (np.isfinite(w).all() and (bias is None or np.isfinite(bias).all())):
        return None
    try:
        # initializers under a new prefix (the conv's own names, e.g. a folded "conv1.bias",
        # are taken); the node keeps the conv's name
        head, head_inits = pack.make_sparse_conv_node(
            _unique(f"{conv.name or x}.nchwc8", taken), conv.input[0], x, w, bias, fmt="bsr",
            block=4, strides=strides, pads=pads, dilations=dilations, activation=act,
            clip_min=lo, clip_max=hi, layout=BLOCKED, input_layout="NCHW")
    except SparsekitError:
        return None
    head.name = conv.name or head.name
    return sorted({conv_j, j}), head, head_inits


def _clip_bounds(node: onnx.NodeProto, inits) -> Optional[tuple]:
    """(min, max) of a Clip with constant bounds (attributes before opset 11, else inputs)."""
    lo, hi = get_attr(node, "min", -np.inf), get_attr(node, "max", np.inf)
    for k, v in ((1, "lo"), (2, "hi")):
        if len(node.input) > k and node.input[k]:
            t = inits.get(node.input[k])
            if t is None:
                return None
            val = float(tensor_to_array(t).reshape(-1)[0])
            lo, hi = (val, hi) if v == "lo" else (lo, val)
    return float(lo), float(hi)


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


def _block_nodes(model: onnx.ModelProto, chain: Chain, taken: set,
                 pools: bool = True) -> List[onnx.NodeProto]:
    """The chain's nodes in NCHWc8 with their Reorders, in an order that runs: a Reorder in
    before the first node reading its tensor, a Reorder out right after its producer (with
    ``pools``, writing the output of the GlobalAveragePool it absorbs, chain.pools)."""
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
                if x in chain.head_plans:
                    head = copy.deepcopy(chain.head_plans[x][1])
                    head.output[0] = blocked[x]
                    out.append(head)
                else:
                    out.append(pack.make_reorder_node(_unique(f"{x}.to_nchwc8", taken), x,
                                                      blocked[x], BLOCKED)[0])
            node.input[k] = blocked[x]
        y = node.output[0]
        node.output[0] = blocked[y]
        kept = [a for a in node.attribute if a.name != "layout"]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute("layout", BLOCKED)])
        out.append(node)
        if y in chain.outputs and pools and y in chain.pools:
            gap = nodes[chain.pool_index[y]]
            out.append(pack.make_reorder_node(gap.name or _unique(f"{y}.pool", taken), blocked[y],
                                              gap.output[0], "NCHW",
                                              channels=_channels(model, nodes[i]),
                                              pool="global_average")[0])
        elif y in chain.outputs:
            out.append(pack.make_reorder_node(_unique(f"{y}.to_nchw", taken), blocked[y], y,
                                              "NCHW", channels=_channels(model, nodes[i]))[0])
    large = {blocked[nodes[i].output[0]] for i in chain.index
             if chain.planes.get(nodes[i].output[0], 0) >= FUSE_MIN_PIXELS}
    out = fuse_expansions(out, large)
    chain.fused = [n.name for n in out if n.op_type == "SparseConvDepthwise"]
    return out


def fuse_expansions(nodes: List[onnx.NodeProto], outputs: set) -> List[onnx.NodeProto]:
    """Each blocked 1x1 SparseConv (no residual) with its output in ``outputs`` and read only
    by a blocked DepthwiseConv, merged with it into one SparseConvDepthwise node: the expanded
    tensor of an inverted residual block is then made and consumed band by band in cache,
    never written whole.
    Its inputs: the SparseConv's six (the residual slot empty), then the depthwise W and bias;
    its attributes: the SparseConv's, and the DepthwiseConv's prefixed "dw_"."""
    readers = _readers(nodes)
    fused: Dict[int, onnx.NodeProto] = {}
    gone = set()
    for j, n in enumerate(nodes):
        if not (n.op_type == "SparseConv" and n.domain == format.DOMAIN
                and _text(n, "layout", "NCHW") == BLOCKED
                and _text(n, "input_layout", BLOCKED) == BLOCKED
                and not (len(n.input) > _RESIDUAL and n.input[_RESIDUAL])
                and n.output[0] in outputs):
            continue
        r = readers.get(n.output[0], [])
        if len(r) != 1 or nodes[r[0]].op_type != "DepthwiseConv" or r[0] in fused:
            continue
        dw = nodes[r[0]]
        if (dw.domain != format.DOMAIN or list(dw.input).index(n.output[0]) != 0
                or _text(dw, "layout", "NCHW") != BLOCKED):
            continue
        inputs = list(n.input) + [""] * (_RESIDUAL + 1 - len(n.input))
        inputs += [dw.input[1], dw.input[2] if len(dw.input) > 2 else ""]
        while inputs and not inputs[-1]:
            inputs.pop()
        node = helper.make_node("SparseConvDepthwise", inputs, [dw.output[0]],
                                name=f"{n.name}+{dw.name}", domain=format.DOMAIN)
        node.attribute.extend(copy.deepcopy(list(n.attribute)))
        for a in dw.attribute:
            b = copy.deepcopy(a)
            b.name = "dw_" + a.name
            node.attribute.append(b)
        fused[r[0]] = node
        gone.add(j)
    return [fused.get(j, n) for j, n in enumerate(nodes) if j not in gone]


def _rewrite(model: onnx.ModelProto, chains: List[Chain]) -> None:
    """Replace the nodes of every chain whose layout is NCHWc8 (and those its heads replace),
    in place."""
    nodes = model.graph.node
    taken = _names(model)
    new_at: Dict[int, List[onnx.NodeProto]] = {}
    drop = set()
    for c in chains:
        if c.layout == BLOCKED:
            new_at[c.index[0]] = _block_nodes(model, c, taken)
            drop.update(c.index)
            drop.update(c.pool_index.values())
            for replaced, _, head_inits in c.head_plans.values():
                drop.update(replaced)
                model.graph.initializer.extend(head_inits)
    if not drop:
        return
    gone = {x for i in drop for x in nodes[i].input}
    merged = []
    for i, n in enumerate(nodes):
        merged.extend(new_at.get(i, []))
        if i not in drop:
            merged.append(n)
    del model.graph.node[:]
    model.graph.node.extend(_topological(merged))
    # a head's dense weights (and Clip bounds) go with the nodes it replaced
    used = {x for n in model.graph.node for x in n.input} | {o.name for o in model.graph.output}
    kept_inits = [t for t in model.graph.initializer if t.name in used or t.name not in gone]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_inits)
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
    """(NCHW model, blocked model, feeds): the chain alone (with the nodes its heads replace),
    both ways, on random inputs."""
    nodes = model.graph.node
    head_nodes = sorted(i for replaced, _, _ in chain.head_plans.values() for i in replaced)
    plain = [copy.deepcopy(nodes[i]) for i in head_nodes + list(chain.index)]
    made = {o for n in plain for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    sources = [x for x in dict.fromkeys(x for n in plain for x in n.input)
               if x and x not in made and x not in inits]
    rng = np.random.default_rng(0)
    feeds = {}
    for x in sources:
        d = shapes.get(x)
        if not d or any(not (isinstance(v, str) and v) and not (isinstance(v, int) and v > 0)
                        for v in d):
            raise SparsekitError(f"the shape of {x!r} is unknown")
        feeds[x] = rng.standard_normal([v if isinstance(v, int) else dims.get(v, 1)
                                        for v in d]).astype(np.float32)
    blocked = _block_nodes(model, chain, _names(model), pools=False)
    used = list({x: inits[x] for n in plain for x in n.input if x in inits}.values())
    head_inits = [t for _, _, hi in chain.head_plans.values() for t in hi]
    opsets = [o for o in model.opset_import if o.domain != format.DOMAIN] + [format.opset_import()]

    def build(ns, consts):
        g = helper.make_graph(
            ns, "chain",
            [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, list(v.shape))
             for k, v in feeds.items()],
            [helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, None)
             for y in chain.outputs], consts)
        return helper.make_model(g, opset_imports=opsets, ir_version=model.ir_version)

    needed = {x for n in blocked for x in n.input}
    return (build(plain, used),
            build(blocked, [t for t in used + head_inits if t.name in needed]), feeds)


def apply_layouts(model: onnx.ModelProto, layout: str, shapes, *, threads: Optional[int] = None,
                  dims: Optional[Dict[str, int]] = None, merge: bool = True) -> List[Chain]:
    """Choose each chain's layout (module docstring) and rewrite ``model`` in place.
    ``shapes``: tensor name -> dims of the model before conversion (chain inputs keep their
    names), used to time chains alone and to find the expansions worth merging (``merge``)."""
    chains = find_chains(model)
    for c in chains:
        c.planes = _planes(model, c, shapes) if merge else {}
        if layout == "NCHW":
            c.reason = "layout NCHW"
        elif layout == BLOCKED:
            c.layout, c.reason = BLOCKED, "layout NCHWc8"
        else:
            _measure(model, c, shapes, threads, dims or {})
        if c.layout != BLOCKED:     # an NCHW chain's outputs keep their pooling node
            c.pools.clear()
            c.pool_index.clear()
        elif c.pools:
            c.reason += f"; {', '.join(c.pools.values())} pooled by the output Reorder"
    _rewrite(model, chains)
    for c in chains:
        if c.layout != BLOCKED:
            c.fused.clear()
        elif c.fused:
            c.reason += f"; {len(c.fused)} expansion(s) merged with their depthwise conv"
    return chains


def _planes(model: onnx.ModelProto, chain: Chain, shapes) -> Dict[str, int]:
    """Output name -> H*W of the chain's nodes whose output shape is known."""
    out = {}
    for i in chain.index:
        y = model.graph.node[i].output[0]
        d = shapes.get(y) or []
        if len(d) == 4 and all(isinstance(v, int) and v > 0 for v in d[2:]):
            out[y] = d[2] * d[3]
    return out


def _measure(model, chain: Chain, shapes, threads, dims) -> None:
    try:
        plain, blocked, feeds = _chain_models(model, chain, shapes, dims)
        # timed without the pooling fusion: it only makes the blocked form faster
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
