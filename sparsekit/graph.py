"""Small helpers over an ONNX ModelProto, shared by prune, convert and inspect.

* lookups: :func:`initializer_map`, :func:`producer_map`, :func:`consumer_map`;
* :func:`node_names`: a stable name for every top-level node (its own name, or ``<Op>_<n>`` with
  n counting earlier nodes of the same op type, so that removing BatchNormalization nodes never
  renames a Conv and a pruned model reports the same names as its source); the graph itself is
  never changed;
* :func:`prunable_layers`: every Conv / Gemm / MatMul whose weight is a constant initializer,
  seen as the 2-D matrix ``W[M, K]`` of docs/format.md, with :meth:`Layer.to_matrix` /
  :meth:`Layer.from_matrix` to move between that view and the initializer's layout;
* :func:`infer_shapes`: onnx shape inference as a ``{tensor name: [dims]}`` map;
* rewriting: :func:`replace_chains` (node swap + clean-up of what nobody reads any more),
  :func:`drop_unused_initializers`, :func:`unique_name`, :func:`set_metadata`;
* :func:`resolve_pads`: a conv's explicit pads with ``auto_pad`` resolved.

Only the main graph is inspected; names used inside subgraphs (If/Loop/Scan bodies) count as
consumers of outer tensors so that nothing referenced there is treated as unused.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import numpy_helper

from . import external
from .errors import SparsekitError

__all__ = [
    "Layer",
    "initializer_map",
    "producer_map",
    "consumer_map",
    "subgraph_references",
    "node_names",
    "get_attr",
    "tensor_to_array",
    "constant_node_value",
    "prunable_layers",
    "infer_shapes",
    "PRUNABLE_OPS",
    "set_initializer",
    "all_names",
    "unique_name",
    "ONNX_DOMAINS",
    "Replacement",
    "replace_chains",
    "drop_unused_initializers",
    "set_metadata",
    "resolve_pads",
    "NameFilter",
]

PRUNABLE_OPS = ("Conv", "Gemm", "MatMul")
ONNX_DOMAINS = ("", "ai.onnx")   # the default operator set, by either of its names


def initializer_map(model_or_graph) -> Dict[str, onnx.TensorProto]:
    """``{name: TensorProto}`` of the main graph's initializers."""
    g = _graph(model_or_graph)
    return {t.name: t for t in g.initializer}


def producer_map(model_or_graph) -> Dict[str, Tuple[int, onnx.NodeProto]]:
    """``{tensor name: (node index, node)}`` for every output of a top-level node."""
    g = _graph(model_or_graph)
    out = {}
    for i, n in enumerate(g.node):
        for o in n.output:
            if o:
                out[o] = (i, n)
    return out


def consumer_map(model_or_graph) -> Dict[str, List[Tuple[int, onnx.NodeProto]]]:
    """``{tensor name: [(node index, node), ...]}`` for every input of a top-level node.

    A node whose subgraph attribute refers to an outer tensor is listed as its consumer too.
    """
    g = _graph(model_or_graph)
    out: Dict[str, List[Tuple[int, onnx.NodeProto]]] = {}
    for i, n in enumerate(g.node):
        names = [x for x in n.input if x]
        for a in n.attribute:
            for sg in _attr_graphs(a):
                names.extend(subgraph_references(sg))
        seen = set()
        for x in names:
            if x not in seen:
                seen.add(x)
                out.setdefault(x, []).append((i, n))
    return out


def subgraph_references(graph: onnx.GraphProto) -> set:
    """Names a (sub)graph reads that it does not define itself (outer-scope references)."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.name for t in graph.sparse_initializer if t.values.name}
    used = set()
    for n in graph.node:
        used.update(x for x in n.input if x)
        for a in n.attribute:
            for sg in _attr_graphs(a):
                used |= subgraph_references(sg)
        defined.update(o for o in n.output if o)
    used.update(o.name for o in graph.output)
    return used - defined


def node_names(model_or_graph) -> List[str]:
    """A stable, unique display name for each top-level node, by position.

    A node's own name is used when it has one and it is not already taken; otherwise
    ``<OpType>_<n>`` where n is the number of earlier nodes of the same op type (named or not),
    with ``_<k>`` appended in the unlikely case that collides with a real name.
    """
    g = _graph(model_or_graph)
    real = {n.name for n in g.node if n.name}
    taken: set = set()
    per_op: Dict[str, int] = {}
    names = []
    for n in g.node:
        idx = per_op.get(n.op_type, 0)
        per_op[n.op_type] = idx + 1
        if n.name and n.name not in taken:
            name = n.name
        else:
            base = f"{n.name}_{idx}" if n.name else f"{n.op_type}_{idx}"
            name, k = base, 1
            while name in taken or (name in real and name != n.name):
                name = f"{base}_{k}"
                k += 1
        taken.add(name)
        names.append(name)
    return names


def get_attr(node: onnx.NodeProto, name: str, default=None):
    """An attribute's Python value (ints, floats, strings, lists), or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def tensor_to_array(t: onnx.TensorProto) -> np.ndarray:
    """numpy copy of an initializer (read from its file now when deferred: external.py), with a
    one-line error for unloaded external data."""
    if external.is_deferred(t):
        return external.read(t)
    if t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data:
        raise SparsekitError(
            f"initializer {t.name!r} is stored in external data that was not loaded; "
            "load the model from its path so its data file is read")
    try:
        return np.array(numpy_helper.to_array(t))
    except Exception as e:  # malformed tensor
        raise SparsekitError(f"initializer {t.name!r} could not be read ({e})") from e


def constant_node_value(node: onnx.NodeProto) -> Optional[np.ndarray]:
    """The value of a Constant node, any of its numeric value attributes; None otherwise."""
    for a in node.attribute:
        if a.name == "value" and a.HasField("t"):
            return tensor_to_array(a.t)
        if a.name == "sparse_value" and a.HasField("sparse_tensor"):
            return _sparse_to_dense(a.sparse_tensor)
        if a.name in ("value_float", "value_floats"):
            return np.asarray(onnx.helper.get_attribute_value(a), dtype=np.float32)
        if a.name in ("value_int", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(a), dtype=np.int64)
    return None


def _sparse_to_dense(sp: onnx.SparseTensorProto) -> np.ndarray:
    """A SparseTensorProto as a dense array (indices linear [NNZ] or coordinates [NNZ, rank])."""
    values = tensor_to_array(sp.values).reshape(-1)
    dims = [int(d) for d in sp.dims]
    out = np.zeros(dims, dtype=values.dtype)
    if values.size:
        idx = tensor_to_array(sp.indices).astype(np.int64)
        flat = idx.reshape(-1) if idx.ndim == 1 else np.ravel_multi_index(idx.T, dims)
        out.reshape(-1)[flat] = values
    return out


@dataclass
class Layer:
    """A Conv / Gemm / MatMul with a constant weight, seen as ``W[M, K]`` (docs/format.md)."""

    index: int                    # position in graph.node
    node: onnx.NodeProto
    name: str                     # stable display name (node_names)
    op: str                       # "Conv", "Gemm" or "MatMul"
    weight: str                   # initializer name
    weight_shape: List[int]       # the initializer's own shape
    dtype: np.dtype               # the initializer's numpy dtype
    M: int                        # output rows
    K: int                        # reduction length
    transposed: bool              # True when the initializer is stored [K, M]
    group: int = 1
    kernel_shape: List[int] = field(default_factory=list)
    in_channels: Optional[int] = None   # Conv: C (= weight.shape[1] * group); else K
    depthwise: bool = False       # Conv with group == C == ... (one input channel per group)
    grouped: bool = False         # Conv with group > 1 (depthwise included)
    output: str = ""              # the node's output tensor name

    @property
    def params(self) -> int:
        return self.M * self.K

    def to_matrix(self, arr: np.ndarray) -> np.ndarray:
        """The initializer's array (its own layout) -> the 2-D ``[M, K]`` view (a copy)."""
        arr = np.asarray(arr)
        if list(arr.shape) != list(self.weight_shape):
            raise ValueError(f"{self.name}: expected weight shape {self.weight_shape}, "
                             f"got {list(arr.shape)}")
        if self.transposed:
            return np.ascontiguousarray(arr.T)
        return arr.reshape(self.M, self.K).copy()

    def from_matrix(self, mat: np.ndarray, copy: bool = True) -> np.ndarray:
        """A 2-D ``[M, K]`` matrix or mask -> the initializer's layout (a copy; with
        ``copy=False`` a view where the layout allows, for a matrix nobody else holds)."""
        mat = np.asarray(mat)
        if mat.shape != (self.M, self.K):
            raise ValueError(f"{self.name}: expected matrix shape {(self.M, self.K)}, "
                             f"got {mat.shape}")
        if self.transposed:
            return np.ascontiguousarray(mat.T)
        out = mat.reshape(self.weight_shape)
        return out.copy() if copy else out

    def matrix(self, model_or_graph) -> np.ndarray:
        """Read this layer's weight from the model and return it as ``[M, K]``."""
        return self.tensor_matrix(initializer_map(model_or_graph)[self.weight])

    def tensor_matrix(self, t: onnx.TensorProto) -> np.ndarray:
        """The weight initializer ``t`` read as ``[M, K]`` (a fresh array, not copied twice:
        a big weight is held once)."""
        arr = tensor_to_array(t)
        if list(arr.shape) != list(self.weight_shape):
            return self.to_matrix(arr)   # the error
        return np.ascontiguousarray(arr.T) if self.transposed else arr.reshape(self.M, self.K)


def prunable_layers(model_or_graph, names: Optional[List[str]] = None) -> Iterator[Layer]:
    """Yield every Conv / Gemm / MatMul of the main graph whose weight is an initializer.

    Conv: input 1 ``[M, C/group, *kernel]`` -> ``[M, C/group·prod(kernel)]``.
    Gemm: input B, ``[M, K]`` with transB=1 or ``[K, M]`` (transposed view) with transB=0.
    MatMul: input 1 when it is a 2-D initializer ``[K, M]`` (transposed view).
    Any dtype is yielded (callers decide what they support).  An initializer that is also
    listed as a graph input (old IR versions) still counts as constant.
    """
    g = _graph(model_or_graph)
    inits = initializer_map(g)
    if names is None:
        names = node_names(g)
    for i, n in enumerate(g.node):
        if n.op_type not in PRUNABLE_OPS or n.domain not in ONNX_DOMAINS:
            continue
        if len(n.input) < 2 or n.input[1] not in inits or not n.output:
            continue
        t = inits[n.input[1]]
        shape = [int(d) for d in t.dims]
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        except Exception:
            dtype = np.dtype("O")
        common = dict(index=i, node=n, name=names[i], op=n.op_type, weight=t.name,
                      weight_shape=shape, dtype=dtype, output=n.output[0])
        if n.op_type == "Conv":
            if len(shape) < 3:
                continue
            group = int(get_attr(n, "group", 1))
            cpg = shape[1]
            kernel = shape[2:]
            K = int(np.prod(shape[1:]))
            C = cpg * group
            yield Layer(M=shape[0], K=K, transposed=False, group=group, kernel_shape=kernel,
                        in_channels=C, depthwise=group > 1 and cpg == 1, grouped=group > 1,
                        **common)
        elif n.op_type == "Gemm":
            if len(shape) != 2:
                continue
            if int(get_attr(n, "transB", 0)):
                yield Layer(M=shape[0], K=shape[1], transposed=False, in_channels=shape[1],
                            **common)
            else:
                yield Layer(M=shape[1], K=shape[0], transposed=True, in_channels=shape[0],
                            **common)
        else:  # MatMul
            if len(shape) != 2:
                continue
            yield Layer(M=shape[1], K=shape[0], transposed=True, in_channels=shape[0], **common)


def infer_shapes(model: onnx.ModelProto) -> Dict[str, List[Union[int, str, None]]]:
    """``{tensor name: dims}`` from onnx shape inference (ints, symbolic names, or None).

    Inference failures are not fatal: whatever is known (graph inputs/outputs, existing
    value_info) is returned.  The model is not modified.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weight_data(model),
                                                     check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception:
        inferred = model
    shapes: Dict[str, List[Union[int, str, None]]] = {}
    g = inferred.graph
    for v in list(g.input) + list(g.value_info) + list(g.output):
        tt = v.type.tensor_type
        if not v.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        dims: List[Union[int, str, None]] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shapes[v.name] = dims
    for t in model.graph.initializer:
        shapes.setdefault(t.name, [int(d) for d in t.dims])
    return shapes


# --------------------------------------------------------------------------- internals

_SHAPE_DATA_LIMIT = 1024  # initializers up to this size keep their data (shape tensors etc.)


def _without_weight_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for shape inference: large initializers keep name, type and dims but no data.

    Inference only needs their shapes; serialising megabytes of weights into the inference
    call dominated its cost.  Small tensors (shapes, axes) keep their values for data propagation.
    """
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    src = model.graph
    g = m.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.sparse_initializer.extend(src.sparse_initializer)
    for t in src.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if n <= _SHAPE_DATA_LIMIT:
            g.initializer.append(numpy_helper.from_array(external.read(t), t.name)
                                 if external.is_deferred(t) else t)
        else:
            s = g.initializer.add()
            s.name = t.name
            s.data_type = t.data_type
            s.dims.extend(t.dims)
    return m


def _graph(model_or_graph) -> onnx.GraphProto:
    if isinstance(model_or_graph, onnx.ModelProto):
        return model_or_graph.graph
    if isinstance(model_or_graph, onnx.GraphProto):
        return model_or_graph
    raise TypeError(f"expected an onnx ModelProto or GraphProto, got {type(model_or_graph)}")


def _attr_graphs(a: onnx.AttributeProto):
    if a.type == onnx.AttributeProto.GRAPH:
        yield a.g
    elif a.type == onnx.AttributeProto.GRAPHS:
        yield from a.graphs


def set_initializer(t: onnx.TensorProto, arr: np.ndarray) -> None:
    """Replace an initializer's data in place (name, doc string kept; dtype of ``arr``).  A
    deferred tensor stays on disk: the new data goes to the scratch file (external.spill)."""
    if external.is_deferred(t):
        external.spill(t, arr)
        return
    doc = t.doc_string
    new = numpy_helper.from_array(np.ascontiguousarray(arr), t.name)
    t.CopyFrom(new)
    if doc:
        t.doc_string = doc


def all_names(g: onnx.GraphProto) -> set:
    s = {t.name for t in g.initializer} | {v.name for v in g.input} | {v.name for v in g.output}
    s |= {v.name for v in g.value_info}
    for n in g.node:
        s.update(n.input)
        s.update(n.output)
    return s


def unique_name(base: str, taken: set) -> str:
    name, k = base, 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    taken.add(name)
    return name


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set ``metadata_props[key]``, replacing an earlier value."""
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    model.metadata_props.add(key=key, value=value)


# --------------------------------------------------------------------------- selection by name

class NameFilter:
    """``include`` / ``exclude``: the same meaning in prune, convert and predict.

    Each is None, a regular expression, or a list of them, searched (``re.search``) in a node's
    name; a name is selected when no exclude matches and, if any include is given, one does.
    """

    def __init__(self, include=None, exclude=None):
        self.include = self._compile(include, "include")
        self.exclude = self._compile(exclude, "exclude")

    @staticmethod
    def _compile(value, what: str) -> List["re.Pattern"]:
        if value is None:
            return []
        out = []
        for x in ([value] if isinstance(value, str) else list(value)):
            if not isinstance(x, str):
                raise SparsekitError(f"{what} must be a regular expression string, got {x!r}")
            try:
                out.append(re.compile(x))
            except re.error as e:
                raise SparsekitError(f"{what} {x!r} is not a valid regex ({e})") from None
        return out

    def excluded_by(self, name: str) -> Optional[str]:
        """The first exclude pattern that matches ``name``, else None."""
        return next((r.pattern for r in self.exclude if r.search(name)), None)

    def included(self, name: str) -> bool:
        """True when no include is given or one matches ``name``."""
        return not self.include or any(r.search(name) for r in self.include)

    def selects(self, name: str) -> bool:
        return self.excluded_by(name) is None and self.included(name)

    def why_not(self, name: str) -> Optional[str]:
        """None when ``name`` is selected, else why not (convert's and predict's wording)."""
        pattern = self.excluded_by(name)
        if pattern is not None:
            return f"excluded (matches exclude {pattern!r})"
        if not self.included(name):
            return "not included (does not match include " + \
                " or ".join(repr(r.pattern) for r in self.include) + ")"
        return None


# --------------------------------------------------------------------------- conv padding

def resolve_pads(node: onnx.NodeProto, spatial: Sequence[Optional[int]], kernel: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int]
                 ) -> Tuple[Optional[List[int]], str]:
    """A conv's pads ``[b1, b2, ..., e1, e2, ...]`` with ``auto_pad`` resolved, or (None, why).

    ``spatial``: the input's spatial sizes (None where unknown); SAME_* padding only needs them
    for strides above 1, where the output size depends on the input size.
    """
    nd = len(kernel)
    auto = get_attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return [0] * (2 * nd), ""
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for ax in range(nd):
            span = dilations[ax] * (kernel[ax] - 1) + 1
            if strides[ax] == 1:
                total = span - 1
            else:
                size = spatial[ax] if ax < len(spatial) else None
                if not isinstance(size, (int, np.integer)) or size <= 0:
                    return None, (f"auto_pad={auto} with stride {strides[ax]} needs a static "
                                  "input size")
                out = -(-int(size) // strides[ax])
                total = max((out - 1) * strides[ax] + span - int(size), 0)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin + end, ""
    if auto not in ("NOTSET", ""):
        return None, f"auto_pad={auto}"
    pads = [int(p) for p in get_attr(node, "pads", [0] * (2 * nd))]
    if len(pads) != 2 * nd:
        return None, f"pads {pads} (expected {2 * nd} values)"
    return pads, ""


# --------------------------------------------------------------------------- rewriting

@dataclass
class Replacement:
    """One new node in place of a chain of old ones (a layer and the epilogue it absorbs)."""

    chain: List[onnx.NodeProto]          # the nodes that leave, in graph order
    node: onnx.NodeProto                 # takes the place of the chain's last node
    initializers: List[onnx.TensorProto]  # the new node's own tensors
    own_inputs: Sequence[int]            # positions of node.input that name those tensors


def replace_chains(model: onnx.ModelProto, replacements: Sequence[Replacement],
                   opset: Optional[onnx.OperatorSetIdProto] = None) -> None:
    """Swap each replacement's node in for its chain, then drop what nobody reads any more.

    Each new node takes the place of the last node of its chain, so every tensor it reads (a
    residual included) is produced before it and the graph stays topologically sorted.  New
    initializers whose names the graph already uses are renamed (``<name>_<k>``).  Afterwards
    initializers and graph inputs nobody reads, and value_info of tensors no longer produced, are
    removed.  ``opset`` (the new nodes' domain) is added to the model's imports if missing.
    """
    if not replacements:
        return
    g = model.graph
    taken = all_names(g)
    # keyed by first output name: unique in a valid graph, unlike protobuf wrapper identity
    absorbed: Dict[str, Optional[onnx.NodeProto]] = {}
    for r in replacements:
        for n in r.chain[:-1]:
            absorbed[n.output[0]] = None
        absorbed[r.chain[-1].output[0]] = r.node
        _rename_clashing(r, taken)
        g.initializer.extend(r.initializers)
    kept = []
    for n in g.node:
        key = n.output[0] if n.output else None
        if key in absorbed:
            if absorbed[key] is not None:
                kept.append(absorbed[key])
        else:
            kept.append(n)
    new_nodes = [copy.deepcopy(n) for n in kept]
    del g.node[:]
    g.node.extend(new_nodes)
    used = {name for n in g.node for name in n.input} | {o.name for o in g.output} | \
        subgraph_references(g)
    live = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    names = {t.name for t in live}
    inputs = [i for i in g.input if i.name in used or i.name not in names]
    del g.input[:]
    g.input.extend(inputs)
    # value_info of tensors that no longer exist would confuse tools
    produced = {o for n in g.node for o in n.output}
    vi = [v for v in g.value_info if v.name in produced]
    del g.value_info[:]
    g.value_info.extend(vi)
    if opset is not None and not any(o.domain == opset.domain for o in model.opset_import):
        model.opset_import.append(opset)


def _rename_clashing(r: Replacement, taken: set) -> None:
    """Rename the replacement's initializers that clash with a name the graph already uses (its
    other inputs are graph tensors that may carry the same name, so only ``own_inputs`` move)."""
    for t in r.initializers:
        if t.name in taken:
            new = unique_name(t.name, taken)
            for pos in r.own_inputs:
                if pos < len(r.node.input) and r.node.input[pos] == t.name:
                    r.node.input[pos] = new
            t.name = new
        taken.add(t.name)


def drop_unused_initializers(g: onnx.GraphProto, candidates: set) -> None:
    """Remove those of ``candidates`` (initializer names) that nothing references any more."""
    used = {o.name for o in g.output} | {v.name for v in g.input}
    for n in g.node:
        used.update(n.input)
    used |= subgraph_references(g)
    unused = [t for t in g.initializer if t.name in candidates and t.name not in used]
    for t in unused:
        g.initializer.remove(t)
