"""The one way prune, convert, inspect, analyze and finetune read a model's weights.

Exporters do not all store a layer's weight as an initializer.  :func:`read_weights` returns a
copy of the model in which every Conv / Gemm / MatMul (and LSTM / GRU / RNN) weight that is a
constant in any of these encodings is an initializer, so the rest of sparsekit sees one form:

* a ``Constant`` node (``value``, ``value_float(s)``, ``value_int(s)``, ``sparse_value``);
* ``Identity`` of a constant (the readers then read the constant itself, so a weight tied this
  way stays one tensor);
* ``Cast`` of a float constant to a float type (float16 / bfloat16 / double -> float): stored in
  the target type, the values onnxruntime computes;
* ``Transpose`` of a constant (``perm`` applied) and ``Reshape`` of a constant by a constant shape;
* chains of these.

Biases and BatchNormalization parameters in those encodings are moved too (BatchNormalization
folding and reconstruction need them as initializers).  Producer nodes nobody reads any more are
removed; ones still read elsewhere stay.  The graph's outputs are unchanged.

:func:`refused_layers` lists, with the reason, the Conv / Gemm / MatMul nodes whose weight cannot
be taken: int8 quantized weights (``DequantizeLinear``, ``QLinearConv``, ``ConvInteger``,
``MatMulInteger``, ``QLinearMatMul``), weights computed at run time, graph inputs, MatMul with the
constant as its first input, weights of a shape no layer view fits.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import (ONNX_DOMAINS, PRUNABLE_OPS, constant_node_value, consumer_map, get_attr,
                    initializer_map, node_names, producer_map, prunable_layers, set_initializer,
                    tensor_to_array)

__all__ = ["read_weights", "refused_layers", "refusal_summary", "Refusal", "QUANTIZED_OPS",
           "FOLDED_OPS", "PRUNE_KINDS"]

QUANTIZED_OPS = ("ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul")
FOLDED_OPS = ("Constant", "Identity", "Cast", "Transpose", "Reshape")
_RECURRENT = ("LSTM", "GRU", "RNN")
_FLOATS = ("float16", "bfloat16", "float32", "float64")
_CAST_TO = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
            onnx.TensorProto.DOUBLE: np.float64}
_MAX_CHAIN = 64     # a longer chain of these ops is not an exporter's weight encoding

# what a refusal is, for grouping: every kind but "activation" is a layer with a weight
QUANTIZED, FIRST_INPUT, SHAPE, GRAPH_INPUT, COMPUTED, ACTIVATION, NOT_CONSTANT = (
    "quantized", "first input", "shape", "graph input", "computed", "activation", "not constant")
# the refusals prune lists as skipped layers: a MatMul of two run-time tensors has no weight
PRUNE_KINDS = (QUANTIZED, FIRST_INPUT, SHAPE, GRAPH_INPUT, COMPUTED, NOT_CONSTANT)


# --------------------------------------------------------------------------- constant values

class _Tracer:
    """Follows a tensor down through Identity / Cast / Transpose / Reshape to a constant."""

    def __init__(self, g: onnx.GraphProto):
        self.inits = initializer_map(g)
        self.producers = producer_map(g)

    def trace(self, name: str) -> Tuple[Optional[np.ndarray], List[onnx.NodeProto],
                                        Optional[onnx.NodeProto]]:
        """(value or None, the chain's nodes from the producer of ``name`` down, the node that
        stops the fold or None).  Values are read only when a fold needs them."""
        chain: List[onnx.NodeProto] = []
        cur = name
        while cur not in self.inits and cur in self.producers and len(chain) < _MAX_CHAIN:
            node = self.producers[cur][1]
            chain.append(node)
            if node.domain not in ONNX_DOMAINS or node.op_type not in FOLDED_OPS:
                return None, chain, node
            if node.op_type == "Constant":
                break
            cur = node.input[0] if node.input else ""
        if cur not in self.inits and not (chain and chain[-1].op_type == "Constant"):
            return None, chain, chain[-1] if chain else None
        value = (tensor_to_array(self.inits[cur]) if cur in self.inits
                 else constant_node_value(chain[-1]))
        if value is None:
            return None, chain, chain[-1]
        for node in reversed([n for n in chain if n.op_type != "Constant"]):
            value = self._apply(node, value)
            if value is None:
                return None, chain, node
        return value, chain, None

    def _apply(self, node: onnx.NodeProto, v: np.ndarray) -> Optional[np.ndarray]:
        op = node.op_type
        if op == "Identity":
            return v
        if op == "Cast":
            to = _CAST_TO.get(int(get_attr(node, "to", 0)))
            return v.astype(to) if to is not None and v.dtype.name in _FLOATS else None
        if op == "Transpose":
            perm = get_attr(node, "perm", None)
            return np.ascontiguousarray(np.transpose(v, perm if perm else None))
        if op == "Reshape":
            if len(node.input) < 2:
                return None
            shape, _, _ = self.trace(node.input[1])
            if shape is None or shape.dtype.kind not in "iu":
                return None
            dims = [int(d) for d in shape.reshape(-1)]
            if not int(get_attr(node, "allowzero", 0)):   # 0 copies the input's dim
                dims = [v.shape[i] if d == 0 and i < v.ndim else d for i, d in enumerate(dims)]
            try:
                return v.reshape(dims)
            except ValueError:
                return None
        return None


# --------------------------------------------------------------------------- the front door

def _parameter_inputs(g: onnx.GraphProto) -> List[Tuple[str, bool]]:
    """(tensor name, is a layer weight) for every input sparsekit reads as a layer's parameter:
    weights of Conv / Gemm / MatMul / LSTM / GRU / RNN, their biases, BatchNormalization's
    parameters, the bias an Add puts on a MatMul / Gemm output."""
    producers = producer_map(g)
    out: List[Tuple[str, bool]] = []
    for n in g.node:
        if n.domain not in ONNX_DOMAINS:
            continue
        ins = list(n.input)
        if n.op_type in PRUNABLE_OPS and len(ins) > 1:
            out.append((ins[1], True))
            if n.op_type != "MatMul" and len(ins) > 2:
                out.append((ins[2], False))
        elif n.op_type in _RECURRENT and len(ins) > 2:
            out += [(ins[1], True), (ins[2], True)] + ([(ins[3], False)] if len(ins) > 3 else [])
        elif n.op_type == "BatchNormalization":
            out += [(x, False) for x in ins[1:5]]
        elif n.op_type == "Add" and len(ins) == 2:
            for a, b in ((ins[0], ins[1]), (ins[1], ins[0])):
                p = producers.get(a)
                if p is not None and p[1].op_type in ("MatMul", "Gemm"):
                    out.append((b, False))
    return [(x, w) for x, w in out if x]


@dataclass
class _Fold:
    value: Optional[np.ndarray]     # None: the constant itself (a Constant node, an Identity)
    chain: List[onnx.NodeProto]     # from the tensor's producer down to the source
    is_weight: bool
    source: str                     # the initializer or Constant output at the bottom


def read_weights(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, List[str]]:
    """A copy of ``model`` with every layer weight (and bias, BatchNormalization parameter) held
    as a constant in another encoding made an initializer (see the module doc), and notes on
    what was folded, for the reports.  ``model`` itself is never modified."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    tracer = _Tracer(g)
    graph_outputs = {o.name for o in g.output}
    subgraph_reads = {x for x, users in consumer_map(g).items()
                      for _, n in users if x not in n.input}
    folds: Dict[str, _Fold] = {}
    constants: Dict[str, onnx.NodeProto] = {}   # Constant nodes that become initializers as is
    aliases: Dict[str, str] = {}                # Identity output -> the constant it passes on
    for name, is_weight in _parameter_inputs(g):
        if name in tracer.inits or name in folds or name in graph_outputs \
                or name not in tracer.producers:
            continue
        chain = _plain_chain(tracer, name)
        if chain is not None:
            bottom = chain[-1]
            src = bottom.output[0] if bottom.op_type == "Constant" else bottom.input[0]
            if src in graph_outputs or (name != src and name in subgraph_reads):
                chain = None    # keep those names as they are: copy the value (below)
            elif bottom.op_type == "Constant" and constant_node_value(bottom) is None:
                continue        # a string Constant: not a weight
        if chain is not None:
            if bottom.op_type == "Constant":
                constants[src] = bottom
            if name != src:
                aliases[name] = src
            folds[name] = _Fold(None, chain, is_weight, src)
            continue
        value, chain, _ = tracer.trace(name)
        if value is not None:
            bottom = chain[-1]
            folds[name] = _Fold(value, chain, is_weight,
                                bottom.output[0] if bottom.op_type == "Constant"
                                else bottom.input[0])
    if not folds:
        return out, []

    new_inits = [_constant_initializer(node, src) for src, node in constants.items()]
    for n in g.node:      # readers of an Identity read the constant itself: a tie stays a tie
        for k, x in enumerate(n.input):
            if x in aliases:
                n.input[k] = aliases[x]
    for name, f in folds.items():
        if f.value is not None:
            new_inits.append(_initializer(name, f.value, tracer.inits.get(f.source)))
    g.initializer.extend(new_inits)

    # the folded tensors' producers go (their names are initializers now, or unread), then the
    # chain nodes nobody reads any more; nodes are keyed by their first output (protobuf
    # wrappers have no stable identity)
    removed = {f.chain[0].output[0] for f in folds.values()}
    removed |= {n.output[0] for n in constants.values()}
    candidates = {n.output[0] for f in folds.values() for n in f.chain}
    for f in folds.values():     # a Reshape's shape, when only that Reshape reads it
        for n in f.chain:
            if n.op_type == "Reshape" and len(n.input) > 1:
                candidates |= {c.output[0] for c in tracer.trace(n.input[1])[1]}
    _remove_unread(g, removed, candidates)
    return out, _notes(folds, tracer, g)


def _plain_chain(tracer: _Tracer, name: str) -> Optional[List[onnx.NodeProto]]:
    """The Identity nodes (and the Constant under them) that ``name`` passes through to a
    constant, or None when something else is on the way."""
    chain: List[onnx.NodeProto] = []
    cur = name
    while cur in tracer.producers and cur not in tracer.inits and len(chain) < _MAX_CHAIN:
        node = tracer.producers[cur][1]
        if node.domain not in ONNX_DOMAINS or node.op_type not in ("Identity", "Constant"):
            return None
        chain.append(node)
        if node.op_type == "Constant":
            return chain
        cur = node.input[0] if node.input else ""
    return chain if chain and cur in tracer.inits else None


def _constant_initializer(node: onnx.NodeProto, name: str) -> onnx.TensorProto:
    for a in node.attribute:
        if a.name == "value" and a.HasField("t"):
            t = onnx.TensorProto()
            t.CopyFrom(a.t)
            t.name = name
            return t
    return numpy_helper.from_array(np.ascontiguousarray(constant_node_value(node)), name)


def _initializer(name: str, value: np.ndarray, like: Optional[onnx.TensorProto]
                 ) -> onnx.TensorProto:
    """A new initializer; when its source is a tensor left on disk the value goes there too
    (graph.set_initializer keeps such a tensor out of memory)."""
    value = np.ascontiguousarray(value)
    if like is not None and like.data_location == onnx.TensorProto.EXTERNAL:
        t = onnx.TensorProto()
        t.CopyFrom(like)
        t.name = name
        set_initializer(t, value)
        return t
    return numpy_helper.from_array(value, name)


def _remove_unread(g: onnx.GraphProto, removed: Set[str], candidates: Set[str]) -> None:
    """Drop the ``removed`` nodes, then those of ``candidates`` whose outputs nobody reads (and
    the initializers only they read, unless the graph lists them as inputs); nodes are named by
    their first output."""
    nodes = list(g.node)
    key = [n.output[0] if n.output else None for n in nodes]
    graph_outputs = {o.name for o in g.output}
    gone = {i for i, k in enumerate(key) if k in removed}
    maybe = {i for i, k in enumerate(key) if k in candidates}
    while True:
        reads: Set[str] = set(graph_outputs)
        for i, n in enumerate(nodes):
            if i not in gone:
                reads.update(_reads(n))
        more = {i for i in maybe - gone if not any(o and o in reads for o in nodes[i].output)}
        if not more:
            break
        gone |= more
    gone_outputs = {o for i in gone for o in nodes[i].output} - {t.name for t in g.initializer}
    inputs_of_gone = {x for i in gone for x in nodes[i].input}
    del g.node[:]
    g.node.extend(n for i, n in enumerate(nodes) if i not in gone)
    graph_inputs = {v.name for v in g.input}
    stale = [t for t in g.initializer
             if t.name in inputs_of_gone and t.name not in reads and t.name not in graph_inputs]
    for t in stale:
        g.initializer.remove(t)
    for v in [v for v in g.value_info if v.name in gone_outputs]:
        g.value_info.remove(v)


def _reads(n: onnx.NodeProto) -> Iterable[str]:
    yield from (x for x in n.input if x)
    for a in n.attribute:
        for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            from_graph = {x for sn in sg.node for x in sn.input}
            yield from from_graph


def _describe(chain: List[onnx.NodeProto], tracer: _Tracer) -> str:
    """``Constant -> Cast(float16 -> float32) -> Transpose`` (the source first)."""
    parts = []
    src = chain[-1]
    if src.op_type != "Constant":
        t = tracer.inits.get(src.input[0])
        parts.append(f"initializer ({_dtype_name(t)})" if t is not None else "initializer")
    for n in reversed(chain):
        if n.op_type == "Cast":
            to = _CAST_TO.get(int(get_attr(n, "to", 0)))
            parts.append(f"Cast(to {np.dtype(to).name})")
        else:
            parts.append(n.op_type)
    return " -> ".join(parts)


def _dtype_name(t: onnx.TensorProto) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).name
    except Exception:
        return "?"


def _notes(folds: Dict[str, "_Fold"], tracer: _Tracer, g: onnx.GraphProto) -> List[str]:
    plain_weights = plain_params = 0
    chains: Counter = Counter()
    casts: Counter = Counter()
    for f in folds.values():
        if len(f.chain) == 1 and f.chain[0].op_type == "Constant":
            if f.is_weight:
                plain_weights += 1
            else:
                plain_params += 1
            continue
        chains[("weight" if f.is_weight else "parameter", _describe(f.chain, tracer))] += 1
        if f.value is not None and any(n.op_type == "Cast" for n in f.chain):
            src = _source_dtype(f, tracer)
            if src != f.value.dtype.name:
                casts[(src, f.value.dtype.name)] += 1
    notes = []
    if plain_weights:   # convert's wording from before this module
        notes.append(f"{plain_weights} Constant-node weight(s) read as initializers")
    if plain_params:
        notes.append(f"{plain_params} Constant-node bias / BatchNormalization parameter(s) read "
                     "as initializers")
    for (what, sig), n in sorted(chains.items()):
        notes.append(f"{n} {what}(s) held as {sig} folded into initializers")
    for (a, b), n in sorted(casts.items()):
        notes.append(f"{n} {a} tensor(s) behind Cast stored as {b} initializers (the values "
                     "onnxruntime computes from them)")
    # a source other nodes still read is now stored twice: the two are pruned separately
    reads = {x for n in g.node for x in n.input}
    for name, f in folds.items():
        if f.value is not None and f.is_weight and f.source in reads:
            notes.append(f"weight {name!r} ({_describe(f.chain, tracer)}) is stored apart from "
                         f"{f.source!r}, which other nodes still read: the two are pruned "
                         "separately")
    return notes


def _source_dtype(f: "_Fold", tracer: _Tracer) -> str:
    bottom = f.chain[-1]
    if bottom.op_type != "Constant":
        t = tracer.inits.get(f.source)
        return _dtype_name(t) if t is not None else "?"
    for a in bottom.attribute:
        if a.name == "value" and a.HasField("t"):
            return _dtype_name(a.t)
    v = constant_node_value(bottom)
    return v.dtype.name if v is not None else "?"


# --------------------------------------------------------------------------- refusals

@dataclass
class Refusal:
    """A Conv / Gemm / MatMul (or int8 quantized op) whose weight sparsekit cannot take."""

    index: int          # position in graph.node
    name: str           # display name (graph.node_names)
    op: str
    weight: str         # the tensor it reads as its weight
    reason: str
    kind: str           # QUANTIZED, FIRST_INPUT, SHAPE, GRAPH_INPUT, COMPUTED, ACTIVATION, ...
    by: str = ""        # the op that computes the weight (DequantizeLinear, Mul, ...)

    def row(self) -> Dict[str, str]:
        """convert's report.skipped entry."""
        return {"name": self.name, "op": self.op, "reason": self.reason}


def refused_layers(model: onnx.ModelProto, names: Optional[List[str]] = None,
                   candidates: Optional[Set[int]] = None) -> List[Refusal]:
    """Every Conv / Gemm / MatMul whose weight is not a usable initializer, and every int8
    quantized op, with the reason, in graph order.  Run it on :func:`read_weights`' result:
    what that takes is not refused.  ``candidates``: the node indices graph.prunable_layers
    yields (computed when not given)."""
    g = model.graph
    names = names if names is not None else node_names(g)
    if candidates is None:
        candidates = {l.index for l in prunable_layers(model, names)}
    tracer = _Tracer(g)
    graph_inputs = {i.name for i in g.input}
    runtime = _runtime_tensors(g)
    out = []
    for i, n in enumerate(g.node):
        if i in candidates or n.domain not in ONNX_DOMAINS:
            continue
        if n.op_type in QUANTIZED_OPS:
            w = n.input[3] if n.op_type.startswith("QLinear") and len(n.input) > 3 else \
                (n.input[1] if len(n.input) > 1 else "")
            out.append(Refusal(i, names[i], n.op_type, w,
                               "int8 quantized op: not supported (float32 only)", QUANTIZED,
                               n.op_type))
            continue
        if n.op_type not in PRUNABLE_OPS or len(n.input) < 2:
            continue
        w = n.input[1]
        kind, by = COMPUTED, ""
        if n.op_type == "MatMul" and _is_constant(tracer, n.input[0]):
            why, kind = "the constant is MatMul's first input (W·X), not supported", FIRST_INPUT
        elif w in tracer.inits:  # a constant that prunable_layers did not take
            why, kind = f"unsupported weight shape {list(tracer.inits[w].dims)}", SHAPE
        elif w in graph_inputs:
            why, kind = "the weight is a graph input, not a constant", GRAPH_INPUT
        elif w in tracer.producers:
            p = tracer.producers[w][1]
            _, chain, stop = tracer.trace(w)
            at_run_time = w in runtime   # an activation: the node has no constant weight
            by = p.op_type
            if p.op_type == "DequantizeLinear" or not at_run_time and any(
                    c.op_type == "DequantizeLinear" for c in chain):
                why = "the weight is computed by DequantizeLinear (int8 weights are not supported)"
                kind, by = (ACTIVATION if at_run_time else QUANTIZED), "DequantizeLinear"
            elif at_run_time:
                why, kind = f"the weight is computed at run time (by {p.op_type})", ACTIVATION
            else:   # from constants only, through an op read_weights does not fold
                by = stop.op_type if stop is not None else p.op_type
                how = by if by == p.op_type else f"{by}, then {p.op_type}"
                why = f"the weight is computed at run time (by {how})"
        else:
            why, kind = "the weight is not a constant", NOT_CONSTANT
        out.append(Refusal(i, names[i], n.op_type, w, why, kind, by))
    return out


def _is_constant(tracer: _Tracer, name: str) -> bool:
    if name in tracer.inits:
        return True
    p = tracer.producers.get(name)
    return p is not None and p[1].op_type == "Constant" and p[1].domain in ONNX_DOMAINS


def _runtime_tensors(g: onnx.GraphProto) -> Set[str]:
    """Tensors that depend on a graph input fed at run time (not on constants alone)."""
    inits = {t.name for t in g.initializer}
    runtime = {i.name for i in g.input if i.name not in inits}
    for n in g.node:   # topological order
        if any(x in runtime for x in _reads(n)):
            runtime.update(o for o in n.output if o)
    return runtime


def refusal_summary(refusals: List[Refusal]) -> str:
    """One phrase per kind of refusal: "12 Conv weights are int8 quantized (DequantizeLinear);
    2 MatMul weights are graph inputs"."""
    groups: Counter = Counter((r.op, r.kind, r.by) for r in refusals)
    parts = []
    for (op, kind, by), n in groups.items():
        one = n == 1
        what, are = (f"{op} weight" if one else f"{op} weights"), ("is" if one else "are")
        nodes = f"{op} node" if one else f"{op} nodes"
        have = "has" if one else "have"
        if kind == QUANTIZED and by == "DequantizeLinear":
            parts.append(f"{n} {what} {are} int8 quantized ({by})")
        elif kind == QUANTIZED:
            parts.append(f"{n} {nodes} " + ("is an int8 quantized op" if one
                                            else "are int8 quantized ops"))
        elif kind == FIRST_INPUT:
            parts.append(f"{n} {nodes} {have} the constant as first input (W·X)")
        elif kind == SHAPE:
            parts.append(f"{n} {what} {have} an unsupported shape")
        elif kind == GRAPH_INPUT:
            parts.append(f"{n} {what} {are} graph input{'' if one else 's'}")
        elif kind == ACTIVATION:
            parts.append(f"{n} {nodes} {'multiplies' if one else 'multiply'} two run-time "
                         "tensors (no constant weight)")
        elif kind == COMPUTED:
            parts.append(f"{n} {what} {are} computed at run time by {by}")
        else:
            parts.append(f"{n} {what} {are} not constant")
    return "; ".join(parts)
