"""convert: rewrite a pruned (or any) model's sparse layers into ai.sparsekit ops.

For every Conv / Gemm / MatMul with a constant float32 weight: find the pattern (from the zeros,
with the recipe `prune` recorded as a hint; models pruned elsewhere convert from their zeros
alone), choose a format, decide sparse or dense (a density threshold per format, or `autotune`
timing both on this machine), absorb the epilogue that follows (bias, BatchNormalization,
Relu/Clip, residual Add), and emit the op with its packed weights as initializers.  Depthwise
convs next to sparse ops become DepthwiseConv so the backbone stays in NCHW inside sparsekit's
ops.  The rules are documented in docs/convert.md.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import pack
from .detect import Pattern, detect, ragged_keep
from .errors import SparsekitError
from .fuse import Fusion, GraphIndex, constant_node_value, plan_fusion
from .graph import (PRUNABLE_OPS, Layer, get_attr, infer_shapes, node_names, prunable_layers,
                    subgraph_references)
from .io import as_model
from .prune import METADATA_KEY as RECIPE_KEY, fold_batchnorms

CONVERTED_KEY = "sparsekit.converted"

# Highest density at which a format is still expected to beat onnxruntime's dense kernels.
# First estimates from the prototype measurements in docs/convert.md (AVX2, 1-2 threads); to be
# re-measured once the SIMD kernels are in.  `autotune` measures on the machine instead.
DEFAULT_MAX_DENSITY = {"block4": 0.6, "block1": 0.3}
_FORMAT_LABEL = {"block4": "1x4 blocks", "block1": "single weights"}

QUANTIZED_OPS = ("ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul")
_ONNX_DOMAINS = ("", "ai.onnx")


@dataclass
class LayerDecision:
    name: str
    op: str
    shape: List[int]              # the weight matrix [M, K]
    density: float                # nonzero weights / size
    pattern: str                  # what the zeros look like (detect.Pattern.describe)
    decision: str                 # "sparse", "dense", "depthwise"
    reason: str
    format: Optional[str] = None  # e.g. "bsr 1x4", "bank 64 1x1"; None when kept dense
    fused: str = ""               # absorbed epilogue, e.g. "batchnorm+residual+relu"
    dense_bytes: int = 0          # the weight as stored in the input model
    sparse_bytes: Optional[int] = None  # values + indices (+ group_ptr) in the output
    dense_ms: Optional[float] = None    # autotune timings of this layer (with its epilogue)
    sparse_ms: Optional[float] = None
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ConvertReport:
    layers: List[LayerDecision] = field(default_factory=list)
    # Conv/Gemm/MatMul (and int8 ops) that are not candidates: no constant weight initializer
    skipped: List[Dict[str, str]] = field(default_factory=list)
    folded_bn: List[Dict[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    settings: Dict[str, object] = field(default_factory=dict)

    @property
    def totals(self) -> dict:
        sparse = [l for l in self.layers if l.decision == "sparse"]
        dense_b = sum(l.dense_bytes for l in sparse)
        sparse_b = sum(l.sparse_bytes or 0 for l in sparse)
        before = sum(l.dense_bytes for l in self.layers)
        after = sum(l.sparse_bytes if l.decision in ("sparse", "depthwise") else l.dense_bytes
                    for l in self.layers)
        return {"converted": len(sparse),
                "depthwise": sum(l.decision == "depthwise" for l in self.layers),
                "kept_dense": sum(l.decision == "dense" for l in self.layers),
                "skipped": len(self.skipped),
                "converted_dense_bytes": dense_b, "converted_sparse_bytes": sparse_b,
                "converted_bytes_ratio": (sparse_b / dense_b) if dense_b else None,
                "weight_bytes_before": before, "weight_bytes_after": after}

    def to_dict(self) -> dict:
        return {"settings": dict(self.settings), "layers": [l.to_dict() for l in self.layers],
                "skipped": list(self.skipped), "folded_bn": list(self.folded_bn),
                "notes": list(self.notes), "totals": self.totals}


@dataclass
class _Plan:
    node: onnx.NodeProto                  # the new ai.sparsekit node
    inits: List[onnx.TensorProto]
    absorbed: List[onnx.NodeProto]        # the original node and its fused epilogue
    fusion: Fusion
    layer: Layer
    choice: Optional["_Choice"] = None   # sparse ops: the format chosen


def convert(model_or_path, *, max_density: Optional[Dict[str, float]] = None,
            autotune: bool = False, threads: Optional[int] = None, depthwise: bool = True,
            include: Optional[str] = None, exclude: Optional[str] = None,
            autotune_dims: Optional[Dict[str, int]] = None,
            progress: Optional[Callable[[int, int, str], None]] = None):
    """Return (converted ModelProto, ConvertReport).  The input model is never modified.

    max_density: per-format density limits overriding DEFAULT_MAX_DENSITY ("block4", "block1").
    autotune: time dense vs sparse for every layer with zeros (onnxruntime, `threads` threads)
      and keep the faster; the thresholds are then not used.  Symbolic dims of the timed inputs
      take their value from `autotune_dims` ({dim name: size}), else 1.
    depthwise: turn depthwise convs next to sparse ops into DepthwiseConv.
    include / exclude: regexes (re.search) on layer names; other layers stay dense.
    progress(done, total, name): called after each layer.
    """
    src = as_model(model_or_path)
    n_sparse = sum(n.domain == pack.DOMAIN for n in src.graph.node)
    if n_sparse:
        raise SparsekitError(f"model is already converted (it has {n_sparse} ai.sparsekit "
                             "op(s)); convert the pruned dense model instead")
    thresholds = _thresholds(max_density)
    inc, exc = _regex(include, "include"), _regex(exclude, "exclude")
    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise SparsekitError(f"threads must be >= 1, got {threads}")
    dims = _autotune_dims(autotune_dims)

    model = copy.deepcopy(src)
    report = ConvertReport(settings={
        "max_density": thresholds, "autotune": bool(autotune), "threads": threads,
        "depthwise": bool(depthwise), "include": include, "exclude": exclude,
        "autotune_dims": dims})
    moved = _constant_weights_to_initializers(model)
    if moved:
        report.notes.append(f"{moved} Constant-node weight(s) read as initializers")
    report.folded_bn, bn_notes = fold_batchnorms(model)
    report.notes.extend(bn_notes)

    ctx = _Context(model, thresholds, bool(autotune))
    tuner = _AutoTuner(threads, ctx.index, dims) if autotune else None
    layers = list(prunable_layers(model, ctx.names))
    report.skipped = _non_candidates(model, ctx, {l.index for l in layers})

    rows: Dict[int, LayerDecision] = {}
    plans: Dict[int, _Plan] = {}
    total, done = len(layers), 0

    def tick(name):
        nonlocal done
        done += 1
        if progress:
            progress(done, total, name)

    for layer in layers:
        if layer.depthwise:
            continue  # decided after the sparse layers are known
        excluded = _excluded(layer.name, inc, exc, include, exclude)
        if excluded:
            rows[layer.index] = _dense_row(model, layer, "-", excluded)
        else:
            row, plan = _plan_sparse(ctx, layer)
            if plan is not None and tuner is not None:
                row, plan = _autotune(tuner, ctx, row, plan)
            rows[layer.index] = row
            if plan is not None:
                plans[layer.index] = plan
                ctx.claimed.update(n.output[0] for n in plan.fusion.nodes)
        tick(layer.name)

    sparse_out = {p.fusion.output for p in plans.values()}
    sparse_in = {p.layer.node.input[0] for p in plans.values()}
    for layer in layers:
        if not layer.depthwise:
            continue
        excluded = _excluded(layer.name, inc, exc, include, exclude)
        if excluded:
            rows[layer.index] = _dense_row(model, layer, "depthwise", excluded)
        elif not depthwise:
            rows[layer.index] = _dense_row(model, layer, "depthwise",
                                           "DepthwiseConv turned off (depthwise=False)")
        else:
            row, plan = _plan_depthwise(ctx, layer, sparse_out, sparse_in)
            rows[layer.index] = row
            if plan is not None:
                plans[layer.index] = plan
        tick(layer.name)

    _plan_lstms(ctx, inc, exc, include, exclude, rows, plans)

    # a weight some node that stays keeps reading stays in the file (and is not saved)
    for i, plan in plans.items():
        users = [ctx.names[j] for j, n in enumerate(model.graph.node)
                 if j not in plans and plan.layer.weight in n.input]
        if rows[i].decision == "sparse" and users:
            rows[i].note = ("the dense weight stays in the file: also read by "
                            + ", ".join(users[:3]) + (" ..." if len(users) > 3 else ""))
    _rewrite(model, plans)
    report.layers = [rows[i] for i in sorted(rows)]
    _set_metadata(model, CONVERTED_KEY, json.dumps(
        {"version": 1, "layers": {l.name: l.format for l in report.layers
                                  if l.decision in ("sparse", "depthwise")}}))
    _check(model, src, report)
    return model, report


# ---------------------------------------------------------------------------------------------
# arguments


def _thresholds(max_density) -> Dict[str, float]:
    out = dict(DEFAULT_MAX_DENSITY)
    if max_density is None:
        return out
    if not isinstance(max_density, dict):
        raise SparsekitError("max_density must be a dict like {'block4': 0.6, 'block1': 0.3}")
    for k, v in max_density.items():
        if k not in DEFAULT_MAX_DENSITY:
            raise SparsekitError(f"max_density: unknown format {k!r} (use "
                                 f"{' or '.join(DEFAULT_MAX_DENSITY)})")
        try:
            d = float(v)
        except (TypeError, ValueError):
            raise SparsekitError(f"max_density[{k!r}] = {v!r} is not a number") from None
        if not 0.0 <= d <= 1.0:
            raise SparsekitError(f"max_density[{k!r}] = {d} must be in [0, 1]")
        out[k] = d
    return out


def _regex(pattern: Optional[str], what: str):
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise SparsekitError(f"{what} {pattern!r} is not a valid regex ({e})") from None


def _excluded(name: str, inc, exc, include, exclude) -> Optional[str]:
    if exc is not None and exc.search(name):
        return f"excluded (matches exclude {exclude!r})"
    if inc is not None and not inc.search(name):
        return f"not included (does not match include {include!r})"
    return None


def _autotune_dims(dims) -> Dict[str, int]:
    out = {}
    for k, v in (dims or {}).items():
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise SparsekitError(f"autotune_dims[{k!r}] = {v!r} is not an integer") from None
        if n < 1:
            raise SparsekitError(f"autotune_dims[{k!r}] = {n} must be >= 1")
        out[str(k)] = n
    return out


# ---------------------------------------------------------------------------------------------
# model preparation


def _constant_weights_to_initializers(model: onnx.ModelProto) -> int:
    """Constant nodes that feed a Conv/Gemm/MatMul weight input become initializers (same name),
    so weights exporters emit as Constant nodes convert like any other."""
    g = model.graph
    weight_inputs = {n.input[1] for n in g.node
                     if n.op_type in PRUNABLE_OPS and n.domain in _ONNX_DOMAINS
                     and len(n.input) > 1 and n.input[1]}
    taken = {t.name for t in g.initializer} | {o.name for o in g.output}
    moved, keep = 0, []
    for n in g.node:
        if n.op_type == "Constant" and n.domain in _ONNX_DOMAINS and len(n.output) == 1 \
                and n.output[0] in weight_inputs and n.output[0] not in taken:
            v = constant_node_value(n)
            if v is not None and v.ndim >= 2:
                g.initializer.append(numpy_helper.from_array(np.asarray(v), n.output[0]))
                moved += 1
                continue
        keep.append(n)
    if moved:
        del g.node[:]
        g.node.extend(keep)
    return moved


class _Context:
    def __init__(self, model: onnx.ModelProto, thresholds: Dict[str, float], autotune: bool):
        self.model = model
        self.thresholds = thresholds
        self.autotune = autotune
        self.names = node_names(model.graph)
        self.shapes = infer_shapes(model)
        self.index = GraphIndex(model)
        self.recipe = _recipe(model)
        self.claimed: set = set()        # first outputs of nodes some plan absorbs
        self.producers = {o: n for n in model.graph.node for o in n.output if o}
        self.graph_inputs = {i.name for i in model.graph.input}


def _recipe(model: onnx.ModelProto) -> dict:
    for p in model.metadata_props:
        if p.key == RECIPE_KEY:
            try:
                layers = json.loads(p.value).get("layers", {})
            except (ValueError, AttributeError):
                return {}
            return layers if isinstance(layers, dict) else {}
    return {}


def _non_candidates(model, ctx: _Context, candidates: set) -> List[Dict[str, str]]:
    """Conv/Gemm/MatMul nodes without a constant weight initializer, and int8 quantized ops."""
    out = []
    for i, n in enumerate(model.graph.node):
        if i in candidates or n.domain not in _ONNX_DOMAINS:
            continue
        if n.op_type in QUANTIZED_OPS:
            out.append({"name": ctx.names[i], "op": n.op_type,
                        "reason": "int8 quantized op: not supported (float32 only)"})
            continue
        if n.op_type not in PRUNABLE_OPS or len(n.input) < 2:
            continue
        w = n.input[1]
        if n.op_type == "MatMul" and n.input[0] in ctx.index.initializers:
            why = "the constant is MatMul's first input (W·X), not supported"
        elif w in ctx.index.initializers:  # a constant that prunable_layers did not take
            why = f"unsupported weight shape {list(ctx.index.initializers[w].dims)}"
        elif w in ctx.graph_inputs:
            why = "the weight is a graph input, not a constant"
        elif w in ctx.producers:
            p = ctx.producers[w]
            if p.op_type == "DequantizeLinear":
                why = "the weight is computed by DequantizeLinear (int8 weights are not supported)"
            else:
                why = f"the weight is computed at run time (by {p.op_type})"
        else:
            why = "the weight is not a constant"
        out.append({"name": ctx.names[i], "op": n.op_type, "reason": why})
    return out


# ---------------------------------------------------------------------------------------------
# per-layer planning


def _dense_row(model, layer: Layer, pattern: str, reason: str,
               W: Optional[np.ndarray] = None) -> LayerDecision:
    if W is None:
        W = layer.matrix(model)
    density = float((W != 0).mean()) if W.size else 1.0
    nbytes = int(np.prod(layer.weight_shape)) * np.dtype(layer.dtype).itemsize
    return LayerDecision(layer.name, layer.op, [layer.M, layer.K], density, pattern, "dense",
                         reason, dense_bytes=nbytes)


def _same_pads(ctx: _Context, layer: Layer, mode: str) -> Tuple[Optional[list], str]:
    """Explicit [top, left, bottom, right] for auto_pad SAME_UPPER / SAME_LOWER, or a reason."""
    node = layer.node
    k = layer.kernel_shape
    strides = list(get_attr(node, "strides", [1, 1]))
    dil = list(get_attr(node, "dilations", [1, 1]))
    xs = ctx.shapes.get(node.input[0]) or []
    begin, end = [], []
    for ax in range(2):
        span = dil[ax] * (k[ax] - 1) + 1
        if strides[ax] == 1:
            total = span - 1
        else:
            size = xs[2 + ax] if len(xs) == 4 else None
            if not isinstance(size, int) or size <= 0:
                return None, f"auto_pad={mode} with stride {strides[ax]} needs a static input size"
            out = -(-size // strides[ax])
            total = max((out - 1) * strides[ax] + span - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return [begin[0], begin[1], end[0], end[1]], ""


def _conv_pads(ctx: _Context, layer: Layer) -> Tuple[Optional[list], str]:
    auto_pad = get_attr(layer.node, "auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        return [0, 0, 0, 0], ""
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(ctx, layer, auto_pad)
    if auto_pad not in ("NOTSET", ""):
        return None, f"auto_pad={auto_pad}"
    pads = list(get_attr(layer.node, "pads", [0, 0, 0, 0]))
    if len(pads) != 4:
        return None, f"pads {pads} (expected 4 values)"
    return pads, ""


def _unsupported(ctx: _Context, layer: Layer) -> Optional[str]:
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
        pads, why = _conv_pads(ctx, layer)
        if pads is None:
            return why
    elif layer.op == "Gemm":
        if get_attr(node, "transA", 0):
            return "Gemm with transA=1"
    return None


def _own_bias(ctx: _Context, layer: Layer) -> Tuple[Optional[np.ndarray], float, str]:
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


@dataclass
class _Choice:
    fmt: str
    block: int
    bank_size: Optional[int]
    keep: Optional[int]
    density: float        # the stored fraction the threshold is compared with
    key: str              # "block4" | "block1"
    pattern: str          # for the report

    @property
    def label(self) -> str:
        return f"{self.fmt} {'' if self.bank_size is None else str(self.bank_size) + ' '}" \
               f"1x{self.block}"


def _kept_groups(mask: np.ndarray, B: int) -> np.ndarray:
    """[G, K]: group g keeps position k when any of its B rows is nonzero there."""
    M, K = mask.shape
    G = -(-M // B)
    padded = np.zeros((G * B, K), dtype=bool)
    padded[:M] = mask
    return padded.reshape(G, B, K).any(axis=1)


def _tolerant_bank(kept: np.ndarray, bank_size: int) -> Optional[int]:
    """keep when every bank holds at most `keep` kept positions (the ragged one at most its
    share): a bank-balanced layer some of whose kept weights are exactly zero."""
    G, K = kept.shape
    if bank_size < 2 or bank_size > K:
        return None
    full = K // bank_size
    counts = kept[:, :full * bank_size].reshape(G, full, bank_size).sum(axis=2)
    keep = int(counts.max()) if counts.size else 0
    if keep < 1 or keep >= bank_size:
        return None
    rest = K - full * bank_size
    if rest and (kept[:, full * bank_size:].sum(axis=1) > ragged_keep(rest, keep, bank_size)).any():
        return None
    return keep


def choose_format(W: np.ndarray, entry: Optional[dict] = None) -> Tuple[Optional[_Choice], Pattern]:
    """The packed format for W [M, K] and the detected pattern (None: no zeros).

    The zeros decide; the recipe `entry` prune recorded (pattern, bank_size, block) is a hint:
    its bank size is tried first, and when the zeros alone do not show the recorded structure
    because some kept weights are exactly zero, the recorded structure is packed with those
    zeros stored (they cost their slot, nothing else).
    """
    entry = entry if isinstance(entry, dict) else {}
    rec_pattern = entry.get("pattern")
    rec_bank = entry.get("bank_size") if rec_pattern == "bank" else None
    rec_bank = int(rec_bank) if isinstance(rec_bank, (int, float)) and rec_bank >= 2 else None
    rec_block = entry.get("block")
    rec_rows = int(rec_block[1]) if rec_pattern in ("bank", "block") and \
        isinstance(rec_block, (list, tuple)) and len(rec_block) == 2 else 1
    p = detect(W, prefer_bank=rec_bank)
    M, K = W.shape
    mask = W != 0
    if p.kind == "dense":
        return None, p
    if p.kind == "empty":
        B = 4 if M >= 4 else 1
        return _Choice("bsr", B, None, None, 0.0, f"block{B}", "empty (all zeros)"), p

    B = p.block_rows if p.block_rows in (1, 4) else 4
    if rec_rows % 4 == 0 and B == 1:
        B = 4  # recorded 1x4 blocks: pack 4-row groups even if a kept weight is zero
    kept = _kept_groups(mask, B)
    stored = float(kept.mean())
    pattern = p.describe()
    if p.kind == "bank" and p.block_rows == B:
        return _Choice("bank", B, p.bank_size, p.keep, stored, f"block{B}", pattern), p
    if rec_bank:
        keep = _tolerant_bank(kept, rec_bank)
        if keep is not None:
            return _Choice("bank", B, rec_bank, keep, stored, f"block{B}",
                           f"bank-balanced (bank {rec_bank}, keep {keep}) per the recipe, "
                           "some kept weights zero"), p
    if B == 4 and p.block_rows != 4:
        pattern = "1x4 blocks per the recipe, some kept weights zero"
    return _Choice("bsr", B, None, None, stored, f"block{B}", pattern), p


def _plan_sparse(ctx: _Context, layer: Layer):
    model = ctx.model
    W_raw = layer.matrix(model)
    why = _unsupported(ctx, layer)
    if why:
        return _dense_row(model, layer, "-", why, W_raw), None
    own_bias, alpha, why = _own_bias(ctx, layer)
    if why:
        return _dense_row(model, layer, "-", why, W_raw), None
    W = W_raw.astype(np.float32)
    if alpha != 1.0:
        W = W * np.float32(alpha)
    choice, p = choose_format(W, ctx.recipe.get(layer.name))
    if choice is None:
        return _dense_row(model, layer, p.describe(), "no zeros", W_raw), None
    limit = ctx.thresholds[choice.key]
    row = _dense_row(model, layer, choice.pattern, "", W_raw)
    if not ctx.autotune and choice.density > limit:
        row.reason = (f"density {choice.density:.2f} > {limit:.2f}, the most at which "
                      f"{_FORMAT_LABEL[choice.key]} are expected to beat dense")
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
    kw = dict(fmt=choice.fmt, block=choice.block, bank_size=choice.bank_size, keep=choice.keep,
              activation=fusion.activation,
              clip_min=fusion.clip_min if fusion.activation == "clip" else None,
              clip_max=fusion.clip_max if fusion.activation == "clip" else None,
              residual=fusion.residual, residual_after_act=fusion.residual_after_act)
    if is_conv:
        w4 = W.reshape(layer.weight_shape)
        w4, bias = fusion.apply(w4, own_bias)
        pads, _ = _conv_pads(ctx, layer)
        new, inits = pack.make_sparse_conv_node(
            layer.name, node.input[0], fusion.output, w4, bias,
            strides=get_attr(node, "strides", [1, 1]), pads=pads,
            dilations=get_attr(node, "dilations", [1, 1]), **kw)
    else:
        Wf, bias = fusion.apply(W, own_bias)
        new, inits = pack.make_sparse_gemm_node(layer.name, node.input[0], fusion.output, Wf,
                                                bias, **kw)
    row.decision, row.format = "sparse", choice.label
    row.reason = f"density {choice.density:.2f} <= {limit:.2f} ({_FORMAT_LABEL[choice.key]})"
    row.fused = fusion.describe()
    row.sparse_bytes = _packed_bytes(new, inits)
    return row, _Plan(new, inits, [node] + fusion.nodes, fusion, layer, choice)


def _packed_bytes(node: onnx.NodeProto, inits: List[onnx.TensorProto]) -> int:
    """Bytes of the packed weight tensors (values, indices, group_ptr: inputs 1-3)."""
    by_name = {t.name: t for t in inits}
    return sum(numpy_helper.to_array(by_name[x]).nbytes for x in node.input[1:4] if x in by_name)


def _plan_depthwise(ctx: _Context, layer: Layer, sparse_out: set, sparse_in: set):
    node = layer.node
    w = numpy_helper.to_array(ctx.index.initializers[layer.weight])
    row = _dense_row(ctx.model, layer, "depthwise", "")
    k = layer.kernel_shape
    strides = list(get_attr(node, "strides", [1, 1]))
    pads, pad_why = (_conv_pads(ctx, layer) if len(k) == 2 else (None, ""))
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
    fusion = plan_fusion(ctx.index, node, layer.M, True, None, {}, frozenset(ctx.claimed),
                         allow_residual=False)
    if node.input[0] not in sparse_out and fusion.output not in sparse_in:
        row.reason = "no sparse op next to it: onnxruntime's own depthwise kernel is kept"
        return row, None
    w, bias = fusion.apply(w, bias)
    new, inits = pack.make_depthwise_node(
        layer.name, node.input[0], fusion.output, w, bias, strides=strides, pads=pads,
        activation=fusion.activation,
        clip_min=fusion.clip_min if fusion.activation == "clip" else None,
        clip_max=fusion.clip_max if fusion.activation == "clip" else None)
    row.decision = "depthwise"
    row.reason = "next to a sparse op: NCHW DepthwiseConv keeps the backbone in sparsekit ops"
    row.format, row.fused = "dense depthwise", fusion.describe()
    row.sparse_bytes = int(numpy_helper.to_array(inits[0]).nbytes)
    return row, _Plan(new, inits, [node] + fusion.nodes, fusion, layer)


# ---------------------------------------------------------------------------------------------
# graph rewrite


def _uniquify(new: onnx.NodeProto, inits: list, taken: set) -> None:
    """Rename the new op's initializers where they clash with a name the graph already uses
    (pack names them `<node>.values`, `<node>.bias`, ... and a model may own those names)."""
    # the packed tensors sit at inputs 1-4 (values, indices, group_ptr, bias; DepthwiseConv:
    # W, bias); input 0 (X) and 5 (residual) are graph tensors that may carry the same name
    own = range(1, min(len(new.input), 5))
    for t in inits:
        if t.name in taken:
            base, i = t.name, 1
            while f"{base}_{i}" in taken:
                i += 1
            for pos in own:
                if new.input[pos] == t.name:
                    new.input[pos] = f"{base}_{i}"
            t.name = f"{base}_{i}"
        taken.add(t.name)


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _rewrite(model: onnx.ModelProto, plans: Dict[int, _Plan]) -> None:
    """Swap planned nodes in, drop absorbed nodes and initializers nobody reads any more.

    Each new op takes the place of the last node of its chain, so every tensor it reads (the
    residual included) is produced before it and the graph stays topologically sorted.
    """
    if not plans:
        return
    g = model.graph
    taken = {t.name for t in g.initializer} | {i.name for i in g.input} | \
        {o for n in g.node for o in n.output} | {o.name for o in g.output} | \
        {v.name for v in g.value_info} | {x for n in g.node for x in n.input}
    # keyed by first output name: unique in a valid graph, unlike protobuf wrapper identity
    absorbed = {}
    for plan in plans.values():
        nodes = plan.absorbed
        for n in nodes[:-1]:
            absorbed[n.output[0]] = None
        absorbed[nodes[-1].output[0]] = plan.node
        _uniquify(plan.node, plan.inits, taken)
        g.initializer.extend(plan.inits)
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
    if not any(o.domain == pack.DOMAIN for o in model.opset_import):
        model.opset_import.append(pack.opset_import())


def _check(model: onnx.ModelProto, src: onnx.ModelProto, report: ConvertReport) -> None:
    """onnx.checker on the output; a failure is our bug unless the input fails it too."""
    if model.ByteSize() >= 2**31 - 1:
        return  # the checker cannot take a ModelProto this large in memory
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        try:
            onnx.checker.check_model(src)
        except (onnx.checker.ValidationError, ValueError) as e_src:
            report.notes.append("the input model does not pass onnx.checker either: "
                                + str(e_src).strip().splitlines()[0])
            return
        raise RuntimeError(f"converted model fails onnx.checker: {e}") from e


# ---------------------------------------------------------------------------------------------
# autotune: time dense vs sparse for one layer, in onnxruntime, same threads


def _autotune(tuner: "_AutoTuner", ctx: _Context, row: LayerDecision, plan: _Plan):
    try:
        row.dense_ms, row.sparse_ms = tuner.time(ctx.model, plan, ctx.shapes)
    except Exception as e:  # a layer we cannot time keeps the threshold decision
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        row.note = f"autotune could not time this layer ({msg[:200]}); threshold rule used"
        limit = ctx.thresholds[plan.choice.key]
        if plan.choice.density > limit:
            return _to_dense(row, f"density {plan.choice.density:.2f} > {limit:.2f}"), None
        return row, plan
    if row.sparse_ms >= row.dense_ms:
        return _to_dense(row, f"autotune: sparse ({row.format}) {row.sparse_ms:.3f} ms >= "
                              f"dense {row.dense_ms:.3f} ms"), None
    row.reason = (f"autotune: sparse ({row.format}) {row.sparse_ms:.3f} ms < "
                  f"dense {row.dense_ms:.3f} ms")
    return row, plan


def _to_dense(row: LayerDecision, reason: str) -> LayerDecision:
    row.decision, row.reason, row.format, row.fused, row.sparse_bytes = \
        "dense", reason, None, "", None
    return row


class _AutoTuner:
    def __init__(self, threads: Optional[int], index: GraphIndex, dims: Dict[str, int]):
        self.threads = threads
        self.index = index
        self.dims = dims

    def feeds(self, plan: _Plan, shapes) -> dict:
        rng = np.random.default_rng(0)
        feeds = {}
        names = [plan.layer.node.input[0]] + ([plan.fusion.residual] if plan.fusion.residual
                                              else [])
        for name in names:
            dims = shapes.get(name)
            if not dims:
                raise SparsekitError(f"the shape of {name!r} is unknown")
            concrete = []
            for d in dims:
                if isinstance(d, int) and d > 0:
                    concrete.append(d)
                elif isinstance(d, str) and d:
                    concrete.append(self.dims.get(d, 1))
                else:
                    raise SparsekitError(f"the shape of {name!r} has an unknown dim")
            feeds[name] = rng.standard_normal(concrete).astype(np.float32)
        return feeds

    def time(self, model, plan: _Plan, shapes) -> tuple:
        from .timing import interleaved

        feeds = self.feeds(plan, shapes)
        out = plan.fusion.output
        dense = _single_layer_model(model, self.index, plan.absorbed, feeds, out)
        sparse = _single_layer_model(model, self.index, [plan.node], feeds, out,
                                     extra_inits=plan.inits)
        from .bench import dense_session, pinned, sparse_session

        # the same session settings and thread pinning `bench` uses, so both measure alike
        with pinned(self.threads) as cfg:
            ds = dense_session(dense, self.threads, config=cfg)
            ss = sparse_session(sparse, self.threads, config=cfg)
            times = interleaved({"dense": lambda: ds.run(None, feeds),
                                 "sparse": lambda: ss.run(None, feeds)}, warmup=2, runs=15)
        return float(np.median(times["dense"])), float(np.median(times["sparse"]))


def _single_layer_model(model, index: GraphIndex, nodes, feeds, out, extra_inits=()):
    """The given nodes alone, their constants (initializers or Constant nodes) as initializers."""
    extra = {t.name for t in extra_inits}
    inner = {o for n in nodes for o in n.output}
    needed = {i for n in nodes for i in n.input
              if i and i not in feeds and i not in extra and i not in inner}
    consts = []
    for name in sorted(needed):
        v = index.constant(name)
        if v is None:
            raise SparsekitError(f"{name!r} is neither an input nor a constant")
        consts.append(numpy_helper.from_array(np.asarray(v), name))
    graph = helper.make_graph(
        [copy.deepcopy(n) for n in nodes], "layer",
        [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, list(v.shape))
         for k, v in feeds.items()],
        [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)],
        consts + list(extra_inits))
    opsets = [o for o in model.opset_import if o.domain != pack.DOMAIN] + [pack.opset_import()]
    return helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)


# ---------------------------------------------------------------------------------------------
# LSTM -> SparseLSTM, GRU -> SparseGRU (sequence.py, docs/sequence.md)

# Most stored density (of W and of R) at which SparseLSTM/GRU is used: the recurrence is
# memory-bound, a bank entry costs 5 bytes (value + 1-byte offset) against 4 dense.
LSTM_MAX_DENSITY = 0.5


def _plan_lstms(ctx: _Context, inc, exc, include, exclude, rows: Dict[int, LayerDecision],
                plans: Dict[int, _Plan]) -> None:
    from .sequence import (RECURRENT_OPS, lstm_unsupported, make_sparse_gru_node,
                           make_sparse_lstm_node)
    model = ctx.model
    inits = ctx.index.initializers
    taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node
                                                         for o in n.output}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in RECURRENT_OPS or node.domain not in _ONNX_DOMAINS:
            continue
        op = node.op_type
        _, _, out_names, sparse_op = RECURRENT_OPS[op]
        name = ctx.names[i]
        why = lstm_unsupported(node, inits, ctx.graph_inputs)
        if why is None and (not node.output or not node.output[0]):
            why = f"output Y is unnamed ({sparse_op} writes {', '.join(out_names)})"
        W = R = None
        if why is None:
            W = numpy_helper.to_array(inits[node.input[1]])
            R = numpy_helper.to_array(inits[node.input[2]])
            if W.dtype != np.float32 or R.dtype != np.float32:
                why = "weights are not float32"
            elif W.ndim != 3 or R.ndim != 3:
                why = "W/R are not 3-D"
        mats = {}
        if W is not None and W.ndim == 3 and R.ndim == 3:
            mats = {"W": W.reshape(-1, W.shape[2]), "R": R.reshape(-1, R.shape[2])}
        # one report row per matrix, named like prune's (<node>/W, <node>/R); W's at key i
        parts = {}
        for part, key in (("W", i), ("R", i + 0.5)):
            t = inits.get(node.input[1 if part == "W" else 2]) if len(node.input) > 2 else None
            M2 = mats.get(part)
            shape = list(M2.shape) if M2 is not None else \
                ([int(np.prod(t.dims[:2])), int(t.dims[2])] if t is not None and len(t.dims) == 3
                 else [])
            density = float((M2 != 0).mean()) if M2 is not None and M2.size else 1.0
            nbytes = 4 * int(np.prod(shape)) if shape else 0
            if t is None:
                continue
            parts[part] = rows[key] = LayerDecision(f"{name}/{part}", op, shape, density,
                                                    "-", "dense", "", dense_bytes=nbytes)

        def dense(reason, parts=parts):
            for r in parts.values():
                r.reason = reason

        excluded = _excluded(name, inc, exc, include, exclude)
        if excluded:
            dense(excluded)
            continue
        if why:
            dense(why)
            continue
        D, H4, I = W.shape
        picks = []
        for part in ("W", "R"):
            choice, p = choose_format(mats[part], ctx.recipe.get(f"{name}/{part}"))
            parts[part].pattern = p.describe()
            if choice is None or choice.fmt != "bank" or choice.bank_size is None:
                picks.append((part, None))
            else:
                picks.append((part, choice))
        bad = [part for part, c in picks if c is None]
        if all(r.pattern == "dense" for r in parts.values()):
            dense("no zeros")
            continue
        if bad:
            dense(f"{' and '.join(bad)} not bank-balanced ({sparse_op} takes bank-balanced W "
                  "and R)")
            continue
        if op == "GRU" and picks[1][1].bank_size > 256:
            dense(f"R bank size {picks[1][1].bank_size} > 256 (SparseGRU's recurrence needs "
                  "one-byte in-bank offsets)")
            continue
        dens = {part: c.density for part, c in picks}
        if max(dens.values()) > LSTM_MAX_DENSITY:
            dense(f"density W {dens['W']:.2f} / R {dens['R']:.2f} > {LSTM_MAX_DENSITY:.2f}, "
                  f"the most at which {sparse_op} is expected to beat dense")
            continue
        cw, cr = picks[0][1], picks[1][1]
        # keep per row: a 1x4-grouped choice keeps the same positions in each row of a group
        kw = dict(w_bank_size=cw.bank_size, r_bank_size=cr.bank_size, w_keep=cw.keep,
                  r_keep=cr.keep)
        ins = list(node.input) + [""] * (8 - len(node.input))
        outs = list(node.output) + [""] * (len(out_names) - len(node.output))
        base = name
        k = 1
        while any(f"{base}{sfx}" in taken for sfx in (".W_values", ".W_indices", ".R_values",
                                                      ".R_indices", ".B", ".Y", ".Y_h", ".Y_c")):
            base = f"{name}_{k}"
            k += 1
        outs = [o if o else f"{base}.{part}_unused" for o, part in zip(outs, out_names)]
        direction = get_attr(node, "direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else str(direction)
        Bv = numpy_helper.to_array(inits[ins[3]]).astype(np.float32) if ins[3] else None
        try:
            if op == "LSTM":
                new, new_inits = make_sparse_lstm_node(base, ins[0], outs, W, R, Bv,
                                                       initial_h=ins[5], initial_c=ins[6],
                                                       direction=direction, **kw)
            else:
                new, new_inits = make_sparse_gru_node(
                    base, ins[0], outs, W, R, Bv, initial_h=ins[5], direction=direction,
                    linear_before_reset=int(get_attr(node, "linear_before_reset", 0)), **kw)
        except SparsekitError as e:
            dense(f"could not pack: {e}")
            continue
        taken.update(t.name for t in new_inits)
        layer = next(l for l in _lstm_layer_list(model, ctx.names) if l.index == i)
        by_name = {t.name: numpy_helper.to_array(t).nbytes for t in new_inits}
        for part, c in picks:
            r = parts[part]
            r.decision = "sparse"
            r.format = f"bank {c.bank_size} 1x1"
            r.reason = (f"density W {dens['W']:.2f} / R {dens['R']:.2f} <= "
                        f"{LSTM_MAX_DENSITY:.2f} ({sparse_op})")
            r.sparse_bytes = sum(v for k, v in by_name.items()
                                 if k.endswith((f".{part}_values", f".{part}_indices")))
        plans[i] = _Plan(new, new_inits, [node], None, layer, cw)


def _lstm_layer_list(model, names):
    from .sequence import lstm_layers
    return list(lstm_layers(model, names))
