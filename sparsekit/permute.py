"""Output-channel permutation before pruning in row groups (``prune --permute``).

A 1x4 block keeps or drops one reduction position for four consecutive output rows together, so
the pattern loses more than per-row pruning wherever those four rows disagree about which inputs
matter (ImageNet MobileNetV2's pointwise convs at 50%: 23% of the squared weight mass dropped in
1x4 blocks, 7% unstructured, 9% bank-balanced).  Which rows share a block is an accident of
training: the network computes the same function with a layer's output channels in any order,
as long as every tensor that carries them is reordered the same way.

For each layer pruned in row groups this module follows its output channels through the graph
(:func:`channel_region`): elementwise ops, per-channel constants, BatchNormalization, depthwise
convs and pooling carry them; the Conv / Gemm / MatMul layers that read them end the region.
Where the region is closed (no Add with another layer's channels, no Concat or Reshape, no graph
output, every touched initializer used by that node alone), the rows are reordered so rows with
similar important inputs share a block (:func:`row_grouping`), and every per-channel initializer
in the region and the reading layers' input columns follow.  Only initializer values move: the
nodes, names and shapes stay, and the model's outputs are the same up to float summation order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from .graph import Layer, consumer_map, get_attr, initializer_map, set_initializer, tensor_to_array
from .patterns import keep_count

# ops that map each element to one element: channels pass through (extra inputs must be
# constants that are scalars or per-channel along the channel axis, e.g. Clip's bounds)
_ELEMENTWISE = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu",
                "Selu", "Softplus", "Softsign", "Gelu", "Mish", "Identity", "Neg", "Abs", "Exp",
                "Erf", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Cast",
                "Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu"}
_POOLS = {"MaxPool", "AveragePool", "LpPool"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}


@dataclass
class Region:
    """Where one layer's output channels go: the initializer axes to permute with its rows."""

    edits: List[Tuple[str, int]] = field(default_factory=list)   # (initializer, axis)
    readers: List[str] = field(default_factory=list)             # layers whose columns follow


@dataclass
class _Carrier:
    """A tensor that carries the channels: its channel axis counted from the end, and whether
    every other non-batch axis is 1 (after a global pool, so Flatten keeps channels whole)."""

    axis: int
    rank: Optional[int]
    pooled: bool = False


def channel_region(model: onnx.ModelProto, layer: Layer, consumers=None, uses=None
                   ) -> Tuple[Optional[Region], Optional[str]]:
    """The closed region of ``layer``'s output channels, or ``(None, why not)``."""
    g = model.graph
    inits = initializer_map(g)
    consumers = consumers if consumers is not None else consumer_map(g)
    uses = uses if uses is not None else {n: len(c) for n, c in consumers.items()}
    graph_outputs = {o.name for o in g.output}
    graph_inputs = {i.name for i in g.input}
    C = layer.M
    region = Region()

    def editable(name: str) -> Optional[str]:
        if name not in inits:
            return f"{name!r} is not a constant"
        if name in graph_inputs:
            return f"{name!r} can be overridden at run time"
        if uses.get(name, 0) != 1:
            return f"{name!r} is shared with another node"
        return None

    # the layer's own rows and bias
    n = layer.node
    if layer.op == "Conv" and layer.group != 1:
        return None, "a grouped conv (its rows cannot leave their group)"
    row_axis = (len(layer.weight_shape) - 1) if layer.transposed else 0
    region.edits.append((layer.weight, row_axis))
    if layer.op == "Conv":
        start = _Carrier(axis=-(len(layer.weight_shape) - 1), rank=len(layer.weight_shape))
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
    elif layer.op == "Gemm":
        start = _Carrier(axis=-1, rank=2)
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
    else:
        start = _Carrier(axis=-1, rank=None)
        bias = None
    if (why := editable(layer.weight)) is not None:
        return None, why
    if bias is not None:
        b = inits.get(bias)
        if b is None:
            return None, "its bias is not a constant"
        shape = list(b.dims)
        if shape and shape[-1] == C:
            if (why := editable(bias)) is not None:
                return None, why
            if layer.op == "Conv" or len(shape) == 1 or all(d == 1 for d in shape[:-1]):
                region.edits.append((bias, len(shape) - 1))
            else:
                return None, "its bias is not a vector"
        elif any(d != 1 for d in shape):
            return None, "its bias is not a vector"

    carriers: Dict[str, _Carrier] = {n.output[0]: start}
    pending = [n.output[0]]
    visited: Dict[int, onnx.NodeProto] = {}
    while pending:
        t = pending.pop()
        if t in graph_outputs:
            return None, f"its channels reach the graph output {t!r}"
        for i, c in consumers.get(t, []):
            if i in visited:
                continue
            visited[i] = c
            why = _follow(c, t, carriers, inits, editable, region, C, pending)
            if why is not None:
                return None, f"{c.op_type} node {c.name or c.output[0]!r}: {why}"
    # an elementwise node joining two tensors must have the region's channels on both sides
    for node in visited.values():
        if node.op_type in _ELEMENTWISE:
            for x in node.input:
                if x and x not in carriers and x not in inits:
                    return None, (f"{node.op_type} node {node.name or node.output[0]!r} mixes its "
                                  f"channels with {x!r}")
    return region, None


def _follow(c: onnx.NodeProto, t: str, carriers: Dict[str, _Carrier], inits, editable,
            region: Region, C: int, pending: List[str]) -> Optional[str]:
    """Extend the region through consumer ``c`` of carrier ``t``; a reason when it cannot."""
    car = carriers[t]
    if c.domain not in ("", "ai.onnx"):
        return "not a standard op"

    def carry(out: str, new: _Carrier) -> None:
        if out not in carriers:
            carriers[out] = new
            pending.append(out)

    op = c.op_type
    if op in _ELEMENTWISE:
        for x in c.input:
            if not x or x in carriers:
                continue
            if x in inits:
                why = _constant_edit(x, inits[x], car, C, editable, region)
                if why is not None:
                    return why
            # anything else is checked once the whole region is known
        carry(c.output[0], _Carrier(car.axis, car.rank, car.pooled))
        return None
    if op == "BatchNormalization":
        if c.input[0] != t or len([o for o in c.output if o]) > 1:
            return "only the inference form is followed"
        if car.rank is None or car.axis != -(car.rank - 1):
            return "channels are not on axis 1"
        for x in c.input[1:5]:
            if (why := editable(x)) is not None:
                return why
            region.edits.append((x, 0))
        carry(c.output[0], _Carrier(car.axis, car.rank, car.pooled))
        return None
    if op in _POOLS or op in _GLOBAL_POOLS:
        if len([o for o in c.output if o]) > 1:
            return "its indices output is used"
        if car.rank is None or car.axis != -(car.rank - 1):
            return "channels are not on axis 1"
        carry(c.output[0], _Carrier(car.axis, car.rank, car.pooled or op in _GLOBAL_POOLS))
        return None
    if op == "Flatten":
        if get_attr(c, "axis", 1) != 1 or not car.pooled or car.rank is None \
                or car.axis != -(car.rank - 1):
            return "only [N, C, 1, ...] -> [N, C] is followed"
        carry(c.output[0], _Carrier(-1, 2, True))
        return None
    if op == "Conv":
        if c.input[0] != t:
            return "the channels are its weight or bias"
        if car.rank is None or car.axis != -(car.rank - 1):
            return "channels are not on axis 1"
        w = c.input[1]
        if w not in inits:
            return "its weight is not a constant"
        shape = list(inits[w].dims)
        group = get_attr(c, "group", 1)
        if group == 1 and shape[1] == C:
            if (why := editable(w)) is not None:
                return why
            region.edits.append((w, 1))
            region.readers.append(c.name or c.output[0])
            return None
        if group == C and shape[0] == C and shape[1] == 1:      # depthwise: channels pass through
            if (why := editable(w)) is not None:
                return why
            region.edits.append((w, 0))
            if len(c.input) > 2 and c.input[2]:
                if (why := editable(c.input[2])) is not None:
                    return why
                region.edits.append((c.input[2], 0))
            carry(c.output[0], _Carrier(car.axis, car.rank, car.pooled))
            return None
        return "a grouped conv that mixes channels"
    if op in ("Gemm", "MatMul"):
        if c.input[0] != t or car.axis != -1 or (op == "Gemm" and get_attr(c, "transA", 0)):
            return "the channels are not its reduction axis"
        w = c.input[1]
        if w not in inits or len(inits[w].dims) != 2:
            return "its weight is not a 2-D constant"
        if (why := editable(w)) is not None:
            return why
        k_axis = 1 if op == "Gemm" and get_attr(c, "transB", 0) else 0
        if inits[w].dims[k_axis] != C:
            return "its weight does not match the channel count"
        region.edits.append((w, k_axis))
        region.readers.append(c.name or c.output[0])
        return None
    return "not followed (it may mix channels)"


def _constant_edit(name: str, t: onnx.TensorProto, car: _Carrier, C: int, editable,
                   region: Region) -> Optional[str]:
    shape = list(t.dims)
    pos = len(shape) + car.axis          # numpy broadcasting aligns the trailing axes
    if pos < 0 or shape[pos] == 1:
        return None                      # the same value for every channel
    if shape[pos] != C:
        return f"constant {name!r} does not broadcast along the channels"
    if (name, pos) in region.edits:
        return None
    if (why := editable(name)) is not None:
        return why
    region.edits.append((name, pos))
    return None


def row_grouping(score: np.ndarray, rows: int, sparsity: float, sweeps: int = 4,
                 candidates: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """A row order for ``score[M, K]`` (a weight's per-entry saliency, e.g. ``w**2``) under which
    groups of ``rows`` consecutive rows, pruned as blocks of one column x ``rows`` rows at
    ``sparsity``, keep more of the total score than the identity order; the identity when none
    found does.

    Local search: each row in turn is swapped with the candidate row (``candidates`` drawn at
    random from other groups) that most lowers the score dropped below the current keep
    threshold, re-estimated every 16 rows.  The result is checked with the exact top-k count.
    ``candidates`` defaults to 256, fewer on big layers (about 3e8 score entries touched per
    layer: a few seconds).
    """
    M, K = score.shape
    n = (M // rows) * rows                          # a partial last group keeps its rows
    identity = np.arange(M)
    if n < 2 * rows or sparsity <= 0.0:
        return identity
    if candidates is None:
        candidates = int(np.clip(3e8 / (sweeps * n * K), 16, 256))
    S = np.asarray(score[:n], dtype=np.float64)
    S = S / max(float(S.sum()), 1e-300)
    keep = keep_count((n // rows) * K, sparsity)
    pos = np.arange(n)                               # pos[i]: the original row now at position i
    cur = S.copy()
    grp = np.arange(n) // rows
    G = cur.reshape(-1, rows, K).sum(1)
    rng = np.random.default_rng(seed)

    def dropped(x, tau):
        return np.where(x < tau, x, 0.0).sum(-1)

    for _ in range(sweeps):
        moved = 0
        for step, i in enumerate(rng.permutation(n)):
            if step % 16 == 0:      # the keep threshold follows the groups as they improve
                tau = np.partition(G.ravel(), G.size - keep)[G.size - keep]
            gi = grp[i]
            js = rng.choice(n, size=min(candidates, n), replace=False)
            js = js[grp[js] != gi]
            if js.size == 0:
                continue
            Si, Sj = cur[i], cur[js]
            a = G[gi][None, :] - Si[None, :] + Sj            # group gi with row j instead of i
            b = G[grp[js]] - Sj + Si[None, :]                # group gj with row i instead of j
            delta = dropped(a, tau) + dropped(b, tau) - dropped(G[gi], tau) - dropped(G[grp[js]], tau)
            best = int(np.argmin(delta))
            if delta[best] < -1e-12:
                j = int(js[best])
                gj = grp[j]
                G[gi] += cur[j] - cur[i]
                G[gj] += cur[i] - cur[j]
                cur[[i, j]] = cur[[j, i]]
                pos[[i, j]] = pos[[j, i]]
                moved += 1
        if moved == 0:
            break
    order = np.concatenate([pos, np.arange(n, M)])
    return order if kept_share(score, rows, sparsity, order) > kept_share(score, rows, sparsity) \
        else identity


def kept_share(score: np.ndarray, rows: int, sparsity: float,
               order: Optional[np.ndarray] = None) -> float:
    """The share of ``score`` that blocks of one column x ``rows`` rows keep at ``sparsity`` (the
    best ``keep_count`` blocks by summed score; a partial last group counts as it is)."""
    S = np.asarray(score if order is None else score[order], dtype=np.float64)
    M, K = S.shape
    pad = (-M) % rows
    if pad:
        S = np.concatenate([S, np.zeros((pad, K))])
    G = S.reshape(-1, rows, K).sum(1).ravel()
    keep = keep_count(G.size, sparsity)
    total = float(S.sum())
    return float(np.partition(G, G.size - keep)[G.size - keep:].sum()) / total if total > 0 else 1.0


@dataclass
class PermutedLayer:
    """One layer whose rows were reordered: the score its blocks keep before and after."""

    name: str
    kept_before: float
    kept_after: float
    readers: List[str]


def permute_rows(model: onnx.ModelProto, layers: Sequence[Tuple[Layer, Tuple[int, int], float]]
                 ) -> Tuple[List[PermutedLayer], List[str]]:
    """Reorder, in place, the output channels of each ``(layer, block (A columns, B rows),
    sparsity)`` whose channel region is closed, by the blocks' summed ``w**2`` (magnitude
    pruning's ranking).  Returns the permuted layers and a note per layer left in its order
    (why)."""
    consumers = consumer_map(model.graph)
    uses = {n: len(c) for n, c in consumers.items()}
    inits = initializer_map(model.graph)
    done: List[PermutedLayer] = []
    notes: List[str] = []
    for layer, (cols, rows), sparsity in layers:
        if rows <= 1 or sparsity <= 0.0 or layer.M < 2 * rows:
            continue
        region, why = channel_region(model, layer, consumers, uses)
        if region is None:
            notes.append(f"{layer.name}: rows kept in order ({why})")
            continue
        W = layer.tensor_matrix(inits[layer.weight]).astype(np.float64)
        score = W * W
        if cols > 1:                    # a block spans `cols` columns: rank their sums
            pad = (-layer.K) % cols
            score = np.pad(score, ((0, 0), (0, pad))).reshape(layer.M, -1, cols).sum(2)
        order = row_grouping(score, rows, sparsity)
        before, after = kept_share(score, rows, sparsity), kept_share(score, rows, sparsity, order)
        if np.array_equal(order, np.arange(layer.M)):
            continue
        for name, axis in region.edits:
            arr = tensor_to_array(inits[name])
            set_initializer(inits[name], np.take(arr, order, axis=axis))
        done.append(PermutedLayer(layer.name, round(before, 4), round(after, 4), region.readers))
    return done, notes
