"""convert: rewrite a pruned (or any) model's sparse layers into ai.sparsekit ops.

For every Conv / Gemm / MatMul with a constant float32 weight: find the pattern (the recipe
`prune` recorded, checked against the zeros; or the zeros alone, so models pruned elsewhere
convert too), choose a format, decide sparse or dense (a density threshold per format, or
`autotune` timing both on this machine), absorb the epilogue that follows (bias, Relu/Clip,
residual Add), and emit the op with its packed weights as initializers.  Depthwise convs next
to sparse ops become DepthwiseConv so the backbone stays in NCHW inside sparsekit's ops.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import pack
from .detect import Pattern, detect
from .errors import SparsekitError
from .fuse import Fusion, GraphIndex, plan_fusion
from .graph import Layer, get_attr, infer_shapes, prunable_layers
from .io import as_model
from .prune import METADATA_KEY as RECIPE_KEY, fold_batchnorms

CONVERTED_KEY = "sparsekit.converted"

# Highest density at which a format is still faster than onnxruntime's dense kernels, from the
# per-layer measurements in docs/convert.md (AVX2, 1 and 2 threads).  `autotune` measures instead.
DEFAULT_MAX_DENSITY = {"block4": 0.6, "block1": 0.3}


@dataclass
class LayerDecision:
    name: str
    op: str
    shape: List[int]              # the weight matrix [M, K]
    density: float
    pattern: str                  # what the zeros look like (detect.Pattern.describe)
    decision: str                 # "sparse", "dense", "depthwise"
    reason: str
    format: Optional[str] = None  # e.g. "bsr 1x4", "bank 64 1x1"
    fused: str = ""
    dense_bytes: int = 0
    sparse_bytes: Optional[int] = None
    dense_ms: Optional[float] = None
    sparse_ms: Optional[float] = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ConvertReport:
    layers: List[LayerDecision] = field(default_factory=list)

    @property
    def totals(self) -> dict:
        sparse = [l for l in self.layers if l.decision == "sparse"]
        dense_b = sum(l.dense_bytes for l in sparse)
        sparse_b = sum(l.sparse_bytes or 0 for l in sparse)
        return {"converted": len(sparse),
                "depthwise": sum(l.decision == "depthwise" for l in self.layers),
                "kept_dense": sum(l.decision == "dense" for l in self.layers),
                "converted_dense_bytes": dense_b, "converted_sparse_bytes": sparse_b,
                "converted_bytes_ratio": (sparse_b / dense_b) if dense_b else None}

    def to_dict(self) -> dict:
        return {"layers": [l.to_dict() for l in self.layers], "totals": self.totals}


def convert(model_or_path, *, max_density: Optional[Dict[str, float]] = None,
            autotune: bool = False, threads: Optional[int] = None, depthwise: bool = True,
            include: Optional[str] = None, exclude: Optional[str] = None,
            progress: Optional[Callable[[int, int, str], None]] = None):
    """Return (converted ModelProto, ConvertReport).  The input model is never modified."""
    import re

    src = as_model(model_or_path)
    if any(n.domain == pack.DOMAIN for n in src.graph.node):
        raise SparsekitError("model is already converted (it has ai.sparsekit ops)")
    model = copy.deepcopy(src)
    fold_batchnorms(model)
    thresholds = dict(DEFAULT_MAX_DENSITY, **(max_density or {}))
    recipe = _recipe(model)
    shapes = infer_shapes(model)
    index = GraphIndex(model)
    report = ConvertReport()
    tuner = _AutoTuner(threads, index) if autotune else None

    layers = list(prunable_layers(model))
    replacements: Dict[int, tuple] = {}   # node index -> (new node, inits, absorbed nodes, fusion)
    claimed: set = set()                  # first outputs of nodes some plan absorbs
    total = len(layers)
    for i, layer in enumerate(layers):
        if progress:
            progress(i, total, layer.name)
        if (include and not re.search(include, layer.name)) or \
                (exclude and re.search(exclude, layer.name)):
            continue
        if layer.depthwise:
            continue  # handled after the sparse layers are known
        row, plan = _plan_sparse(model, layer, index, shapes, recipe, thresholds, claimed)
        if plan is not None and tuner is not None:
            row.dense_ms, row.sparse_ms = tuner.time(model, layer, plan, shapes)
            if row.sparse_ms >= row.dense_ms:
                row.decision, row.reason, plan = "dense", (
                    f"autotune: sparse {row.sparse_ms:.3f} ms >= dense {row.dense_ms:.3f} ms"), None
            else:
                row.reason = f"autotune: sparse {row.sparse_ms:.3f} ms < dense {row.dense_ms:.3f} ms"
        if plan is not None:
            replacements[layer.index] = plan
            claimed.update(n.output[0] for n in plan[2])
        report.layers.append(row)

    if depthwise and replacements:
        for layer in layers:
            if not layer.depthwise or (include and not re.search(include, layer.name)) or \
                    (exclude and re.search(exclude, layer.name)):
                continue
            row, plan = _plan_depthwise(model, layer, index, claimed)
            if plan is not None:
                replacements[layer.index] = plan
            report.layers.append(row)
    if progress:
        progress(total, total, "")

    _rewrite(model, replacements)
    model.metadata_props.add(key=CONVERTED_KEY, value=json.dumps(
        {"version": 1, "layers": {l.name: l.format for l in report.layers
                                  if l.decision == "sparse"}}))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:  # a bug of ours, not the user's
        raise RuntimeError(f"converted model fails onnx.checker: {e}") from e
    return model, report


# ---------------------------------------------------------------------------------------------
# per-layer planning


def _recipe(model: onnx.ModelProto) -> dict:
    for p in model.metadata_props:
        if p.key == RECIPE_KEY:
            try:
                return json.loads(p.value).get("layers", {})
            except (ValueError, AttributeError):
                return {}
    return {}


def _format_for(p: Pattern) -> tuple:
    """(format, block, bank_size, threshold key) for a detected pattern."""
    if p.kind == "bank":
        return "bank", p.block_rows, p.bank_size, f"block{p.block_rows}"
    if p.kind == "block":
        return "bsr", 4, None, "block4"
    return "bsr", 1, None, "block1"


def _dense_row(layer: Layer, W: Optional[np.ndarray], pattern: str, reason: str) -> LayerDecision:
    density = float((W != 0).mean()) if W is not None and W.size else 1.0
    return LayerDecision(layer.name, layer.op, [layer.M, layer.K], density, pattern, "dense",
                         reason, dense_bytes=layer.M * layer.K * 4)


def _unsupported(layer: Layer, shapes: dict) -> Optional[str]:
    """Why this layer cannot become a sparse op (None if it can)."""
    node = layer.node
    if layer.dtype != np.float32:
        return f"{np.dtype(layer.dtype).name} weights are not supported (float32 only)"
    if layer.op == "Conv":
        if layer.grouped:
            return f"grouped conv (group {layer.group})"
        if len(layer.kernel_shape) != 2:
            return f"{len(layer.kernel_shape)}-D conv (2-D only)"
        auto_pad = get_attr(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad not in ("NOTSET", "VALID"):
            return f"auto_pad={auto_pad}"
    elif layer.op == "Gemm":
        if get_attr(node, "transA", 0):
            return "Gemm with transA=1"
    elif layer.op == "MatMul":
        xs = shapes.get(node.input[0])
        if xs is None or len(xs) < 2:
            return "MatMul input of rank < 2 or unknown rank"
    return None


def _plan_sparse(model, layer: Layer, index: GraphIndex, shapes, recipe, thresholds, claimed):
    why = _unsupported(layer, shapes)
    if why:
        return _dense_row(layer, None, "-", why), None
    W = layer.matrix(model).astype(np.float32)
    node = layer.node
    bias = None
    if layer.op == "Gemm":
        alpha = float(get_attr(node, "alpha", 1.0))
        beta = float(get_attr(node, "beta", 1.0))
        W = W * np.float32(alpha)
        if len(node.input) > 2 and node.input[2]:
            c = index.constant(node.input[2])
            vec = None if c is None else _bias_vector(np.asarray(c) * beta, layer.M)
            if vec is None:
                return _dense_row(layer, W, "-", "Gemm C is not a constant per-feature bias"), None
            bias = vec
    elif layer.op == "Conv" and len(node.input) > 2 and node.input[2]:
        b = index.constant(node.input[2])
        if b is None:
            return _dense_row(layer, W, "-", "Conv bias is not a constant"), None
        bias = np.asarray(b, np.float32).reshape(-1)

    entry = recipe.get(layer.name, {}) if isinstance(recipe, dict) else {}
    p = detect(W, prefer_bank=entry.get("bank_size") if entry.get("pattern") == "bank" else None)
    if p.kind == "dense":
        return _dense_row(layer, W, p.describe(), "no zeros"), None
    fmt, block, bank_size, key = _format_for(p)
    if p.density > thresholds[key]:
        return _dense_row(layer, W, p.describe(), (
            f"density {p.density:.2f} > {thresholds[key]:.2f}, the most at which "
            f"{'1x4 blocks' if block == 4 else 'single weights'} beat dense")), None

    is_conv = layer.op == "Conv"
    y_shape = shapes.get(node.output[0])
    fusion = plan_fusion(index, node, layer.M, is_conv, y_shape, shapes, frozenset(claimed))
    if fusion.bias is not None:
        bias = fusion.bias if bias is None else bias + fusion.bias
    kw = dict(fmt=fmt, block=block, bank_size=bank_size, activation=fusion.activation,
              clip_min=fusion.clip_min if fusion.activation == "clip" else None,
              clip_max=fusion.clip_max if fusion.activation == "clip" else None,
              residual=fusion.residual, residual_after_act=fusion.residual_after_act)
    if is_conv:
        w4 = numpy_helper.to_array(index.initializers[layer.weight]).astype(np.float32)
        new, inits = pack.make_sparse_conv_node(
            layer.name, node.input[0], fusion.output, w4, bias,
            strides=get_attr(node, "strides", [1, 1]), pads=_conv_pads(node),
            dilations=get_attr(node, "dilations", [1, 1]), **kw)
    else:
        new, inits = pack.make_sparse_gemm_node(layer.name, node.input[0], fusion.output, W,
                                                bias, **kw)
    sparse_bytes = sum(t.ByteSize() for t in inits if not t.name.endswith(".bias"))
    fmt_name = f"{fmt} {'' if bank_size is None else str(bank_size) + ' '}1x{block}"
    row = LayerDecision(layer.name, layer.op, [layer.M, layer.K], p.density, p.describe(),
                        "sparse", f"density {p.density:.2f} <= {thresholds[key]:.2f}",
                        format=fmt_name, fused=fusion.describe(), dense_bytes=W.size * 4,
                        sparse_bytes=sparse_bytes)
    return row, (new, inits, [node] + fusion.nodes, fusion)


def _plan_depthwise(model, layer: Layer, index: GraphIndex, claimed):
    node = layer.node
    w = numpy_helper.to_array(index.initializers[layer.weight])
    row = LayerDecision(layer.name, layer.op, [layer.M, layer.K], 1.0, "depthwise", "dense", "",
                        dense_bytes=w.size * 4)
    k = layer.kernel_shape
    if w.dtype != np.float32:
        row.reason = f"{w.dtype.name} weights"
    elif len(k) != 2 or k[0] != k[1]:
        row.reason = f"kernel {k} is not square 2-D"
    elif list(get_attr(node, "dilations", [1, 1])) != [1, 1]:
        row.reason = "dilated depthwise conv"
    elif get_attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        row.reason = "auto_pad"
    if row.reason:
        return row, None
    bias = None
    if len(node.input) > 2 and node.input[2]:
        b = index.constant(node.input[2])
        if b is None:
            row.reason = "bias is not a constant"
            return row, None
        bias = np.asarray(b, np.float32).reshape(-1)
    fusion = plan_fusion(index, node, layer.M, True, None, {}, frozenset(claimed))  # no residual
    if fusion.bias is not None:
        bias = fusion.bias if bias is None else bias + fusion.bias
    new, inits = pack.make_depthwise_node(
        layer.name, node.input[0], fusion.output, w, bias,
        strides=get_attr(node, "strides", [1, 1]), pads=_conv_pads(node),
        activation=fusion.activation,
        clip_min=fusion.clip_min if fusion.activation == "clip" else None,
        clip_max=fusion.clip_max if fusion.activation == "clip" else None)
    row.decision, row.reason = "depthwise", "NCHW depthwise kernel keeps the backbone in sparsekit ops"
    row.format, row.fused, row.sparse_bytes = "dense depthwise", fusion.describe(), w.size * 4
    return row, (new, inits, [node] + fusion.nodes, fusion)


def _bias_vector(c: np.ndarray, M: int) -> Optional[np.ndarray]:
    if c.size == 1:
        return np.full(M, float(c.reshape(-1)[0]), np.float32)
    if c.size == M and c.shape[-1] == M:
        return c.reshape(-1).astype(np.float32)
    return None


def _conv_pads(node) -> list:
    auto_pad = get_attr(node, "auto_pad", b"NOTSET")
    if auto_pad in (b"VALID", "VALID"):
        return [0, 0, 0, 0]
    return list(get_attr(node, "pads", [0, 0, 0, 0]))


# ---------------------------------------------------------------------------------------------
# graph rewrite


def _uniquify(new: onnx.NodeProto, inits: list, taken: set) -> None:
    """Rename the new op's initializers where they clash with a name the graph already uses
    (pack names them `<node>.values`, `<node>.bias`, ... and a model may own those names)."""
    for t in inits:
        if t.name in taken:
            base, i = t.name, 1
            while f"{base}_{i}" in taken:
                i += 1
            for pos, name in enumerate(new.input):
                if name == t.name:
                    new.input[pos] = f"{base}_{i}"
            t.name = f"{base}_{i}"
        taken.add(t.name)


def _rewrite(model: onnx.ModelProto, replacements: Dict[int, tuple]) -> None:
    """Swap planned nodes in, drop absorbed nodes and initializers nobody reads any more."""
    if not replacements:
        return
    g = model.graph
    taken = {t.name for t in g.initializer} | {i.name for i in g.input} | \
        {o for n in g.node for o in n.output}
    # keyed by first output name: unique in a valid graph, unlike protobuf wrapper identity
    absorbed = {}
    for new, inits, nodes, _ in replacements.values():
        for n in nodes[:-1]:
            absorbed[n.output[0]] = None
        absorbed[nodes[-1].output[0]] = new  # the new op takes the place of the chain's end
        _uniquify(new, inits, taken)
        g.initializer.extend(inits)
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
    used = {name for n in g.node for name in n.input} | {o.name for o in g.output}
    live = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    names = {t.name for t in live}
    inputs = [i for i in g.input if i.name in used or i.name not in names]
    del g.input[:]
    g.input.extend(inputs)
    # value_info of tensors that no longer exist would confuse tools
    produced = {o for n in g.node for o in n.output} | {i.name for i in g.input}
    vi = [v for v in g.value_info if v.name in produced]
    del g.value_info[:]
    g.value_info.extend(vi)
    if not any(o.domain == pack.DOMAIN for o in model.opset_import):
        model.opset_import.append(pack.opset_import())


# ---------------------------------------------------------------------------------------------
# autotune: time dense vs sparse for one layer, in onnxruntime, same threads


class _AutoTuner:
    def __init__(self, threads: Optional[int], index: GraphIndex):
        self.threads = threads
        self.index = index

    def time(self, model, layer: Layer, plan, shapes) -> tuple:
        from .timing import interleaved

        new, inits, nodes, fusion = plan
        feeds = {}
        for name in [layer.node.input[0]] + ([fusion.residual] if fusion.residual else []):
            dims = shapes.get(name)
            if dims is None or not all(isinstance(d, int) and d > 0 for d in dims):
                dims = [d if isinstance(d, int) and d > 0 else 1 for d in (dims or [1])]
            feeds[name] = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
        out = fusion.output
        dense = _single_layer_model(model, self.index, nodes, feeds, out)
        sparse = _single_layer_model(model, self.index, [new], feeds, out, extra_inits=inits)
        ds, ss = _sessions(dense, sparse, self.threads)
        times = interleaved({"dense": lambda: ds.run(None, feeds),
                             "sparse": lambda: ss.run(None, feeds)}, warmup=2, runs=15)
        return float(np.median(times["dense"])), float(np.median(times["sparse"]))


def _single_layer_model(model, index: GraphIndex, nodes, feeds, out, extra_inits=()):
    """The given nodes alone, their constants (initializers or Constant nodes) as initializers."""
    extra = {t.name for t in extra_inits}
    needed = {i for n in nodes for i in n.input if i and i not in feeds and i not in extra}
    consts = [numpy_helper.from_array(np.asarray(index.constant(i)), i) for i in sorted(needed)]
    graph = helper.make_graph(
        [copy.deepcopy(n) for n in nodes], "layer",
        [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, list(v.shape))
         for k, v in feeds.items()],
        [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)],
        consts + list(extra_inits))
    m = helper.make_model(graph, opset_imports=list(model.opset_import) + [pack.opset_import()],
                          ir_version=model.ir_version)
    return m


def _sessions(dense, sparse, threads):
    import onnxruntime as ort

    from .runtime import session

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    ds = ort.InferenceSession(dense.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return ds, session(sparse, threads=threads)
