"""Sequence models: ONNX ``LSTM`` nodes with bank-balanced W and R (docs/sequence.md).

* :func:`lstm_layers`: the W ``[D, 4H, I]`` and R ``[D, 4H, H]`` initializers of every LSTM node
  seen as row matrices ``[D·4H, I]`` / ``[D·4H, H]`` (banks along the input axis), for ``prune``;
* :func:`lstm_unsupported`: why an LSTM node cannot become SparseLSTM (or None);
* :func:`make_sparse_lstm_node`: the ``ai.sparsekit`` SparseLSTM node and its packed tensors;
* :func:`pack_bank_rows`: a vectorised bank packer for single-row blocks (LSTM matrices are
  large: 6000 rows x 1500 for the zoo's language model).
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .detect import ragged_keep
from .errors import SparsekitError
from .graph import Layer, get_attr, initializer_map, node_names

__all__ = ["LSTM_DEFAULT_BANK", "lstm_layers", "lstm_unsupported", "make_sparse_lstm_node",
           "pack_bank_rows", "DEFAULT_ACTIVATIONS"]

# Default bank size of prune for LSTM W/R: 16 keeps the bank in one zmm (AVX-512 vpermps) or
# two ymm (AVX2 vpermps + blendv) for the SpMV kernel's in-register gathers; measured best
# on AVX2 and within 20% of bank 32 on AVX-512 (docs/sequence.md).
LSTM_DEFAULT_BANK = 16
DEFAULT_ACTIVATIONS = ["Sigmoid", "Tanh", "Tanh"]
DOMAIN = "ai.sparsekit"


def _directions(node: onnx.NodeProto) -> int:
    d = get_attr(node, "direction", b"forward")
    d = d.decode() if isinstance(d, bytes) else str(d)
    return 2 if d == "bidirectional" else 1


def lstm_layers(model_or_graph, names: Optional[List[str]] = None) -> Iterator[Layer]:
    """Yield W and R of every top-level ONNX LSTM whose weight is a 3-D initializer.

    Each is a :class:`Layer` with ``op="LSTM"``, name ``<node name>/W`` or ``<node name>/R``,
    ``M = D·4H`` rows (gate order i, o, f, c per direction) and ``K = input_size`` or
    ``hidden_size``; the initializer ``[D, 4H, K]`` reshapes to ``[M, K]`` directly.
    """
    g = model_or_graph.graph if isinstance(model_or_graph, onnx.ModelProto) else model_or_graph
    inits = initializer_map(g)
    if names is None:
        names = node_names(g)
    for i, n in enumerate(g.node):
        if n.op_type != "LSTM" or n.domain not in ("", "ai.onnx") or len(n.input) < 3:
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
            yield Layer(index=i, node=n, name=f"{names[i]}/{part}", op="LSTM", weight=t.name,
                        weight_shape=shape, dtype=dtype, M=shape[0] * shape[1], K=shape[2],
                        transposed=False, in_channels=shape[2],
                        output=n.output[0] if n.output else "")


def lstm_unsupported(node: onnx.NodeProto, inits: dict, graph_inputs: set) -> Optional[str]:
    """Why this LSTM node cannot become a SparseLSTM, or None."""
    if node.domain not in ("", "ai.onnx"):
        return "not an ONNX LSTM"
    acts = get_attr(node, "activations")
    if acts is not None:
        acts = [a.decode() if isinstance(a, bytes) else str(a) for a in acts]
        D = _directions(node)
        if [a.lower() for a in acts] != [a.lower() for a in DEFAULT_ACTIVATIONS * D]:
            return f"activations {acts} (only the default Sigmoid, Tanh, Tanh)"
    for a in ("activation_alpha", "activation_beta"):
        if get_attr(node, a) is not None:
            return f"attribute {a} is not supported"
    if get_attr(node, "clip") is not None:
        return "attribute clip is not supported"
    if int(get_attr(node, "input_forget", 0)):
        return "input_forget = 1 is not supported"
    if int(get_attr(node, "layout", 0)):
        return "layout = 1 (batch first) is not supported"
    ins = list(node.input) + [""] * (8 - len(node.input))
    if ins[4]:
        return "sequence_lens is not supported"
    if ins[7]:
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
    M, K = W.shape
    bs = int(bank_size)
    if bs < 1 or bs > 65536 or bs > K:
        raise SparsekitError(f"bank_size must be in [1, min(65536, K={K})], got {bs}")
    nb = -(-K // bs)
    full = K // bs
    kept = W != 0
    counts = kept[:, :full * bs].reshape(M, full, bs).sum(axis=2)
    if keep is None:
        keep = int(counts.max()) if counts.size else 0
    keep = int(keep)
    if (counts > keep).any():
        r, b = np.argwhere(counts > keep)[0]
        raise SparsekitError(f"not bank-balanced with bank_size {bs}: row {r} bank {b} keeps "
                             f"{counts[r, b]} entries, more than keep = {keep}")
    rest = K - full * bs
    if rest and (kept[:, full * bs:].sum(axis=1) > ragged_keep(rest, keep, bs)).any():
        raise SparsekitError(f"not bank-balanced: a ragged last bank (length {rest}) keeps "
                             f"more than {ragged_keep(rest, keep, bs)} entries")
    values = np.zeros((M, nb, keep, 1), np.float32)
    indices = np.zeros((M, nb, keep), np.uint8 if bs <= 256 else np.uint16)
    if keep:
        Wp = np.zeros((M, nb * bs), np.float32)
        Wp[:, :K] = W
        Wb = Wp.reshape(M, nb, bs)
        kb = Wb != 0
        # kept offsets first, in increasing order (stable sort of "not kept")
        order = np.argsort(~kb, axis=2, kind="stable")[:, :, :keep]
        n_kept = kb.sum(axis=2)                                     # [M, nb]
        valid = np.arange(keep)[None, None, :] < n_kept[:, :, None]
        vals = np.take_along_axis(Wb, order, axis=2)
        values[..., 0] = np.where(valid, vals, 0.0)
        indices[...] = np.where(valid, order, 0)
    return {"values": values, "indices": indices}


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
    W = np.asarray(W, np.float32)
    R = np.asarray(R, np.float32)
    if W.ndim != 3 or R.ndim != 3 or W.shape[:2] != R.shape[:2] or W.shape[1] % 4:
        raise SparsekitError(f"expected W [D, 4H, I] and R [D, 4H, H], got {list(W.shape)} "
                             f"and {list(R.shape)}")
    D, H4, I = W.shape
    H = H4 // 4
    if R.shape[2] != H:
        raise SparsekitError(f"R has shape {list(R.shape)}, expected [{D}, {H4}, {H}]")
    if direction not in ("forward", "reverse", "bidirectional") or \
            (D == 2) != (direction == "bidirectional"):
        raise SparsekitError(f"direction {direction!r} does not match num_directions {D}")
    if len(outputs) != 3 or not all(outputs):
        raise SparsekitError("SparseLSTM needs three output names (Y, Y_h, Y_c)")
    pw = pack_bank_rows(W.reshape(D * H4, I), w_bank_size, w_keep)
    pr = pack_bank_rows(R.reshape(D * H4, H), r_bank_size, r_keep)
    inits = [numpy_helper.from_array(pw["values"], f"{name}.W_values"),
             numpy_helper.from_array(pw["indices"], f"{name}.W_indices"),
             numpy_helper.from_array(pr["values"], f"{name}.R_values"),
             numpy_helper.from_array(pr["indices"], f"{name}.R_indices")]
    inputs = [x, f"{name}.W_values", f"{name}.W_indices", f"{name}.R_values",
              f"{name}.R_indices", "", "", initial_h, initial_c]
    if B is not None:
        Bv = np.asarray(B, np.float32)
        if Bv.shape != (D, 8 * H):
            raise SparsekitError(f"B has shape {list(Bv.shape)}, expected [{D}, {8 * H}]")
        inits.append(numpy_helper.from_array(Bv, f"{name}.B"))
        inputs[5] = f"{name}.B"
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node("SparseLSTM", inputs, list(outputs), name=name, domain=DOMAIN,
                            hidden_size=int(H), input_size=int(I), direction=direction,
                            w_bank_size=int(w_bank_size), r_bank_size=int(r_bank_size))
    return node, inits
