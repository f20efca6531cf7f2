"""LSTM -> SparseLSTM, GRU -> SparseGRU (sequence.py, docs/sequence.md)."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
from onnx import numpy_helper

from ..errors import SparsekitError
from ..graph import ONNX_DOMAINS, get_attr, tensor_to_array
from ..predict import NONFINITE_REASON, all_finite
from ..sequence import (RECURRENT_OPS, lstm_layers, lstm_unsupported, make_sparse_gru_node,
                        make_sparse_lstm_node)
from .choice import FormatChoice, choose_format
from .plan import Context, Plan
from .report import NO_ZEROS, LayerDecision

__all__ = ["LSTM_MAX_DENSITY", "plan_recurrent"]

# Most stored density (of W and of R) at which SparseLSTM/GRU is used: the recurrence is
# memory-bound, a bank entry costs 5 bytes (value + 1-byte offset) against 4 dense.
LSTM_MAX_DENSITY = 0.5


_PACKED_SUFFIXES = (".W_values", ".W_indices", ".R_values", ".R_indices", ".B", ".Y", ".Y_h",
                    ".Y_c")


def plan_recurrent(ctx: Context, rows: Dict[int, LayerDecision], plans: Dict[int, Plan]) -> None:
    """A report row per LSTM/GRU weight matrix (W and R) into ``rows``, and a plan for each
    recurrence whose W and R are bank-balanced and sparse enough."""
    model = ctx.model
    taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node
                                                         for o in n.output}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in RECURRENT_OPS or node.domain not in ONNX_DOMAINS:
            continue
        name = ctx.names[i]
        why, W, R = _weights(ctx, node)
        parts = _report_rows(ctx, node, i, W, R, rows)
        why = ctx.filter.why_not(name) or why
        picks = None
        if why is None:
            picks, why = _bank_choices(ctx, node, name, parts, W, R)
        if why is None:
            plan, why = _pack(ctx, node, i, W, R, picks, taken)
        if why is not None:
            for r in parts.values():
                r.reason = why
            continue
        sparse_op = RECURRENT_OPS[node.op_type][3]
        by_name = {t.name: numpy_helper.to_array(t).nbytes for t in plan.inits}
        for part, c in picks.items():
            r = parts[part]
            r.decision = "sparse"
            r.format = f"bank {c.bank_size} 1x1"
            r.reason = (f"density W {picks['W'].density:.2f} / R {picks['R'].density:.2f} <= "
                        f"{LSTM_MAX_DENSITY:.2f} ({sparse_op})")
            r.sparse_bytes = sum(v for k, v in by_name.items()
                                 if k.endswith((f".{part}_values", f".{part}_indices")))
        plans[i] = plan


def _weights(ctx: Context, node) -> Tuple[Optional[str], Optional[np.ndarray],
                                           Optional[np.ndarray]]:
    """(why the node cannot become a sparse op or None, W, R): W/R when they could be read."""
    inits = ctx.index.initializers
    out_names, sparse_op = RECURRENT_OPS[node.op_type][2:]
    why = lstm_unsupported(node, inits, ctx.graph_inputs)
    if why is None and (not node.output or not node.output[0]):
        why = f"output Y is unnamed ({sparse_op} writes {', '.join(out_names)})"
    W = R = None
    if why is None:
        W = tensor_to_array(inits[node.input[1]])
        R = tensor_to_array(inits[node.input[2]])
        if W.dtype != np.float32 or R.dtype != np.float32:
            why = "weights are not float32"
        elif W.ndim != 3 or R.ndim != 3:
            why = "W/R are not 3-D"
        elif not all_finite(W, R, _bias(inits, node)):
            why = NONFINITE_REASON
    return why, W, R


def _bias(inits, node) -> Optional[np.ndarray]:
    """B of the node (a constant initializer: lstm_unsupported checked), or None."""
    return tensor_to_array(inits[node.input[3]]) if len(node.input) > 3 and node.input[3] \
        else None


def _matrices(W, R) -> Dict[str, np.ndarray]:
    """W [D, G*H, I] and R [D, G*H, H] as the 2-D matrices prune saw."""
    if W is None or W.ndim != 3 or R.ndim != 3:
        return {}
    return {"W": W.reshape(-1, W.shape[2]), "R": R.reshape(-1, R.shape[2])}


def _report_rows(ctx: Context, node, i: int, W, R, rows: Dict[int, LayerDecision]
                 ) -> Dict[str, LayerDecision]:
    """One dense report row per matrix, named like prune's (<node>/W, <node>/R); W's at key
    i, R's at i + 0.5 so they sort after the node's place."""
    inits = ctx.index.initializers
    mats = _matrices(W, R)
    parts = {}
    for part, key in (("W", i), ("R", i + 0.5)):
        t = inits.get(node.input[1 if part == "W" else 2]) if len(node.input) > 2 else None
        if t is None:
            continue
        M2 = mats.get(part)
        shape = list(M2.shape) if M2 is not None else \
            ([int(np.prod(t.dims[:2])), int(t.dims[2])] if len(t.dims) == 3 else [])
        density = float((M2 != 0).mean()) if M2 is not None and M2.size else 1.0
        nbytes = 4 * int(np.prod(shape)) if shape else 0
        parts[part] = rows[key] = LayerDecision(f"{ctx.names[i]}/{part}", node.op_type, shape,
                                                density, "-", "dense", "", dense_bytes=nbytes)
    return parts


def _bank_choices(ctx: Context, node, name: str, parts: Dict[str, LayerDecision], W, R
                  ) -> Tuple[Optional[Dict[str, FormatChoice]], Optional[str]]:
    """The bank format of W and of R, or why the recurrence stays dense."""
    sparse_op = RECURRENT_OPS[node.op_type][3]
    mats = _matrices(W, R)
    picks = {}
    for part in ("W", "R"):
        choice, p = choose_format(mats[part], ctx.recipe.get(f"{name}/{part}"))
        parts[part].pattern = p.describe()
        if choice is not None and choice.fmt == "bank" and choice.bank_size is not None:
            picks[part] = choice
    bad = [part for part in ("W", "R") if part not in picks]
    if all(r.pattern == "dense" for r in parts.values()):
        return None, NO_ZEROS
    if bad:
        return None, (f"{' and '.join(bad)} not bank-balanced ({sparse_op} takes bank-balanced "
                      "W and R)")
    if node.op_type == "GRU" and picks["R"].bank_size > 256:
        return None, (f"R bank size {picks['R'].bank_size} > 256 (SparseGRU's recurrence needs "
                      "one-byte in-bank offsets)")
    dw, dr = picks["W"].density, picks["R"].density
    if max(dw, dr) > LSTM_MAX_DENSITY:
        return None, (f"density W {dw:.2f} / R {dr:.2f} > {LSTM_MAX_DENSITY:.2f}, the most at "
                      f"which {sparse_op} is expected to beat dense")
    return picks, None


def _pack(ctx: Context, node, i: int, W, R, picks: Dict[str, FormatChoice], taken: set
          ) -> Tuple[Optional[Plan], Optional[str]]:
    """The SparseLSTM/SparseGRU node and its tensors, or why packing failed."""
    op = node.op_type
    out_names = RECURRENT_OPS[op][2]
    name = ctx.names[i]
    cw, cr = picks["W"], picks["R"]
    kw = dict(w_bank_size=cw.bank_size, r_bank_size=cr.bank_size, w_keep=cw.keep,
              r_keep=cr.keep)
    ins = list(node.input) + [""] * (8 - len(node.input))
    outs = list(node.output) + [""] * (len(out_names) - len(node.output))
    # one base name for all the new tensors (unused outputs get names too)
    base, k = name, 1
    while any(f"{base}{sfx}" in taken for sfx in _PACKED_SUFFIXES):
        base = f"{name}_{k}"
        k += 1
    outs = [o if o else f"{base}.{part}_unused" for o, part in zip(outs, out_names)]
    direction = get_attr(node, "direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    inits = ctx.index.initializers
    Bv = tensor_to_array(inits[ins[3]]).astype(np.float32) if ins[3] else None
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
        return None, f"could not pack: {e}"
    taken.update(t.name for t in new_inits)
    layer = next(l for l in lstm_layers(ctx.model, ctx.names) if l.index == i)
    return Plan(new, new_inits, [node], None, layer, cw), None
