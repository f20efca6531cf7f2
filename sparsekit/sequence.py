"""Sequence models: ONNX ``LSTM`` and ``GRU`` nodes with bank-balanced W and R (docs/sequence.md).

* :func:`lstm_layers`: the W ``[D, G·H, I]`` and R ``[D, G·H, H]`` initializers of every LSTM
  (G = 4 gates) and GRU (G = 3) node seen as row matrices ``[D·G·H, I]`` / ``[D·G·H, H]``
  (banks along the input axis), for ``prune``;
* :func:`lstm_unsupported`: why an LSTM or GRU node cannot become SparseLSTM / SparseGRU (or None);
* :func:`make_sparse_lstm_node`, :func:`make_sparse_gru_node`: the ``ai.sparsekit`` nodes and
  their packed tensors;
* :func:`pack_bank_rows`: format "bank" with single-row blocks for the W / R rows, on the
  vectorised packer of :mod:`sparsekit.format` (LSTM matrices are large: 6000 rows x 1500 for
  the zoo's language model).
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import SparsekitError
from .format import DOMAIN, MAX_BANK_SIZE, bank_caps, bank_counts, pack_bank_blocks
from .graph import ONNX_DOMAINS, Layer, get_attr, initializer_map, node_names

__all__ = ["LSTM_DEFAULT_BANK", "RECURRENT_OPS", "lstm_layers", "lstm_unsupported",
           "make_sparse_lstm_node", "make_sparse_gru_node", "pack_bank_rows",
           "DEFAULT_ACTIVATIONS"]

# Default bank size of prune for LSTM W/R: 16 keeps the bank in one zmm (AVX-512 vpermps) or
# two ymm (AVX2 vpermps + blendv) for the SpMV kernel's in-register gathers; measured best
# on AVX2 and within 20% of bank 32 on AVX-512 (docs/sequence.md).
LSTM_DEFAULT_BANK = 16
# ONNX op -> (gates per hidden unit, default activations per direction, outputs, sparse op)
RECURRENT_OPS = {"LSTM": (4, ["Sigmoid", "Tanh", "Tanh"], ("Y", "Y_h", "Y_c"), "SparseLSTM"),
                 "GRU": (3, ["Sigmoid", "Tanh"], ("Y", "Y_h"), "SparseGRU")}
DEFAULT_ACTIVATIONS = RECURRENT_OPS["LSTM"][1]


def _directions(node: onnx.NodeProto) -> int:
    d = get_attr(node, "direction", b"forward")
    d = d.decode() if isinstance(d, bytes) else str(d)
    return 2 if d == "bidirectional" else 1


def lstm_layers(model_or_graph, names: Optional[List[str]] = None) -> Iterator[Layer]:
    """Yield W and R of every top-level ONNX LSTM or GRU whose weight is a 3-D initializer.

    Each is a :class:`Layer` with ``op="LSTM"`` or ``"GRU"``, name ``<node name>/W`` or
    ``<node name>/R``, ``M = D·G·H`` rows (gate order i, o, f, c or z, r, h per direction) and
    ``K = input_size`` or ``hidden_size``; the initializer ``[D, G·H, K]`` reshapes to
    ``[M, K]`` directly.
    """
    g = model_or_graph.graph if isinstance(model_or_graph, onnx.ModelProto) else model_or_graph
    inits = initializer_map(g)
    if names is None:
        names = node_names(g)
    for i, n in enumerate(g.node):
        if n.op_type not in RECURRENT_OPS or n.domain not in ONNX_DOMAINS or len(n.input) < 3:
            continue
        for pos, part in ((1, "W"), (2, "R")):
            t = inits.get(n.input[pos])
            if t is None or len(t.dims) != 3:
                continue
            shape = [int(d) for d in t.dims]
            try:
                dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
            except Exception:
                dtype = np.dtype("O")
            yield Layer(index=i, node=n, name=f"{names[i]}/{part}", op=n.op_type, weight=t.name,
                        weight_shape=shape, dtype=dtype, M=shape[0] * shape[1], K=shape[2],
                        transposed=False, in_channels=shape[2],
                        output=n.output[0] if n.output else "")


# the attributes of ONNX LSTM and GRU that SparseLSTM / SparseGRU implement or that
# lstm_unsupported checks (LSTM adds input_forget, GRU linear_before_reset)
_RECURRENT_ATTRS = {"activations", "activation_alpha", "activation_beta", "clip", "direction",
                    "hidden_size", "layout"}


def lstm_unsupported(node: onnx.NodeProto, inits: dict, graph_inputs: set) -> Optional[str]:
    """Why this LSTM / GRU node cannot become a SparseLSTM / SparseGRU, or None."""
    if node.domain not in ONNX_DOMAINS or node.op_type not in RECURRENT_OPS:
        return "not an ONNX LSTM or GRU"
    op = node.op_type
    default_acts = RECURRENT_OPS[op][1]
    acts = get_attr(node, "activations")
    if acts is not None:
        acts = [a.decode() if isinstance(a, bytes) else str(a) for a in acts]
        D = _directions(node)
        if [a.lower() for a in acts] != [a.lower() for a in default_acts * D]:
            return f"activations {acts} (only the default {', '.join(default_acts)})"
    for a in ("activation_alpha", "activation_beta"):
        if get_attr(node, a) is not None:
            return f"attribute {a} is not supported"
    if get_attr(node, "clip") is not None:
        return "attribute clip is not supported"
    if op == "LSTM" and int(get_attr(node, "input_forget", 0)):
        return "input_forget = 1 is not supported"
    known = _RECURRENT_ATTRS | ({"input_forget"} if op == "LSTM" else {"linear_before_reset"})
    other = sorted(a.name for a in node.attribute if a.name not in known)
    if other:
        return f"attribute {other[0]} is not supported"
    direction = get_attr(node, "direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    if direction not in ("forward", "reverse", "bidirectional"):
        return f"direction {direction!r} is not supported"
    if op == "GRU" and int(get_attr(node, "linear_before_reset", 0)) not in (0, 1):
        return "linear_before_reset must be 0 or 1"
    if int(get_attr(node, "layout", 0)):
        return "layout = 1 (batch first) is not supported"
    ins = list(node.input) + [""] * (8 - len(node.input))
    if ins[4]:
        return "sequence_lens is not supported"
    if op == "LSTM" and ins[7]:
        return "peepholes (input P) are not supported"
    for pos, what in ((1, "W"), (2, "R")):
        if ins[pos] not in inits:
            return f"{what} is not a constant initializer"
    if ins[3] and ins[3] not in inits:
        return "B is not a constant initializer"
    if any(ins[p] in inits and ins[p] in graph_inputs for p in (1, 2, 3)):
        return "a weight initializer is also a graph input (overridable, not constant)"
    if get_attr(node, "hidden_size") is None:
        return "attribute hidden_size is missing"
    return None


def pack_bank_rows(W2d, bank_size: int, keep: Optional[int] = None) -> dict:
    """Format "bank" with block 1 for a row-balanced W2d [M, K] (docs/format.md), vectorised.

    ``keep``: the entries per full bank; default the largest count found.  Banks with fewer
    nonzeros (kept weights that are exactly zero) are padded with zero entries; a bank with
    more than ``keep`` (or a ragged bank with more than its share) raises SparsekitError.
    """
    W = np.ascontiguousarray(W2d, dtype=np.float32)
    if W.ndim != 2 or W.size == 0:
        raise SparsekitError(f"expected a non-empty 2-D matrix, got shape {list(W.shape)}")
    K = W.shape[1]
    bs = int(bank_size)
    if bs < 1 or bs > MAX_BANK_SIZE or bs > K:
        raise SparsekitError(f"bank_size must be in [1, min({MAX_BANK_SIZE}, K={K})], got {bs}")
    full = K // bs
    counts = bank_counts(W != 0, bs)                               # [M, nbanks]
    full_counts = counts[:, :full]
    if keep is None:
        keep = int(full_counts.max()) if full_counts.size else 0
    keep = int(keep)
    if (full_counts > keep).any():
        r, b = np.argwhere(full_counts > keep)[0]
        raise SparsekitError(f"not bank-balanced with bank_size {bs}: row {r} bank {b} keeps "
                             f"{full_counts[r, b]} entries, more than keep = {keep}")
    rest = K - full * bs
    if rest:
        cap = int(bank_caps(K, bs, keep)[-1])
        if (counts[:, -1] > cap).any():
            raise SparsekitError(f"not bank-balanced: a ragged last bank (length {rest}) keeps "
                                 f"more than {cap} entries")
    # rows are groups of one: the block axis is a trailing 1, as the op's values [M, nb, keep, 1]
    return pack_bank_blocks(W[:, :, None], bs, keep)


def _sparse_recurrent_node(op: str, name: str, x: str, outputs: List[str], W, R, B,
                           state_inputs: List[str], direction: str, w_bank_size: int,
                           r_bank_size: int, w_keep: Optional[int], r_keep: Optional[int],
                           **attrs) -> Tuple[onnx.NodeProto, List[onnx.TensorProto]]:
    gates, _, out_names, sparse_op = RECURRENT_OPS[op]
    W = np.asarray(W, np.float32)
    R = np.asarray(R, np.float32)
    if W.ndim != 3 or R.ndim != 3 or W.shape[:2] != R.shape[:2] or W.shape[1] % gates:
        raise SparsekitError(f"expected W [D, {gates}H, I] and R [D, {gates}H, H], got "
                             f"{list(W.shape)} and {list(R.shape)}")
    D, HG, I = W.shape
    H = HG // gates
    if R.shape[2] != H:
        raise SparsekitError(f"R has shape {list(R.shape)}, expected [{D}, {HG}, {H}]")
    if direction not in ("forward", "reverse", "bidirectional") or \
            (D == 2) != (direction == "bidirectional"):
        raise SparsekitError(f"direction {direction!r} does not match num_directions {D}")
    if len(outputs) != len(out_names) or not all(outputs):
        raise SparsekitError(f"{sparse_op} needs {len(out_names)} output names "
                             f"({', '.join(out_names)})")
    pw = pack_bank_rows(W.reshape(D * HG, I), w_bank_size, w_keep)
    pr = pack_bank_rows(R.reshape(D * HG, H), r_bank_size, r_keep)
    inits = [numpy_helper.from_array(pw["values"], f"{name}.W_values"),
             numpy_helper.from_array(pw["indices"], f"{name}.W_indices"),
             numpy_helper.from_array(pr["values"], f"{name}.R_values"),
             numpy_helper.from_array(pr["indices"], f"{name}.R_indices")]
    inputs = [x, f"{name}.W_values", f"{name}.W_indices", f"{name}.R_values",
              f"{name}.R_indices", "", ""] + list(state_inputs)
    if B is not None:
        Bv = np.asarray(B, np.float32)
        if Bv.shape != (D, 2 * gates * H):
            raise SparsekitError(f"B has shape {list(Bv.shape)}, expected [{D}, {2 * gates * H}]")
        inits.append(numpy_helper.from_array(Bv, f"{name}.B"))
        inputs[5] = f"{name}.B"
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node(sparse_op, inputs, list(outputs), name=name, domain=DOMAIN,
                            hidden_size=int(H), input_size=int(I), direction=direction,
                            w_bank_size=int(w_bank_size), r_bank_size=int(r_bank_size), **attrs)
    return node, inits


def make_sparse_lstm_node(name: str, x: str, outputs: List[str], W, R, B=None, *,
                          initial_h: str = "", initial_c: str = "", direction: str = "forward",
                          w_bank_size: int = LSTM_DEFAULT_BANK,
                          r_bank_size: int = LSTM_DEFAULT_BANK, w_keep: Optional[int] = None,
                          r_keep: Optional[int] = None
                          ) -> Tuple[onnx.NodeProto, List[onnx.TensorProto]]:
    """A SparseLSTM node for ONNX LSTM weights W [D, 4H, I], R [D, 4H, H], B [D, 8H] (or None).

    ``outputs``: the three output names (Y, Y_h, Y_c), all required.  W and R must be
    bank-balanced along their last axis with the given bank sizes.  Returns (node, inits),
    initializers named ``<name>.W_values``, ``.W_indices``, ``.R_values``, ``.R_indices``, ``.B``.
    """
    return _sparse_recurrent_node("LSTM", name, x, outputs, W, R, B, [initial_h, initial_c],
                                  direction, w_bank_size, r_bank_size, w_keep, r_keep)


def make_sparse_gru_node(name: str, x: str, outputs: List[str], W, R, B=None, *,
                         initial_h: str = "", direction: str = "forward",
                         linear_before_reset: int = 0, w_bank_size: int = LSTM_DEFAULT_BANK,
                         r_bank_size: int = LSTM_DEFAULT_BANK, w_keep: Optional[int] = None,
                         r_keep: Optional[int] = None
                         ) -> Tuple[onnx.NodeProto, List[onnx.TensorProto]]:
    """A SparseGRU node for ONNX GRU weights W [D, 3H, I], R [D, 3H, H], B [D, 6H] (or None).

    ``outputs``: the two output names (Y, Y_h).  ``r_bank_size`` at most 256 (the recurrence
    runs on the SpMV kernel).  Otherwise as :func:`make_sparse_lstm_node`.
    """
    if not 1 <= int(r_bank_size) <= 256:
        raise SparsekitError(f"SparseGRU needs r_bank_size in [1, 256], got {r_bank_size}")
    if int(linear_before_reset) not in (0, 1):
        raise SparsekitError(f"linear_before_reset must be 0 or 1, got {linear_before_reset}")
    return _sparse_recurrent_node("GRU", name, x, outputs, W, R, B, [initial_h], direction,
                                  w_bank_size, r_bank_size, w_keep, r_keep,
                                  linear_before_reset=int(linear_before_reset))
