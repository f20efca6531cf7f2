"""LSTM word-level language model, the PTB setup of the bank-balanced sparsity paper (Cao et al. 2019)."""
from __future__ import annotations

import math

import onnx
from onnx import TensorProto

from ._graph import GraphBuilder, check_bool, check_int, check_seed, finish

DESCRIPTION = (
    "LSTM language model (PTB-sized, as in the bank-balanced sparsity paper): tokens int64 "
    "[35, 1] -> Gather from embedding [10000, 1500] -> ONNX LSTM (hidden 1500, forward; gate "
    "order i, o, f, c) -> Squeeze num_directions -> MatMul [1500, 10000] + Add bias -> logits "
    "[35, 1, 10000]. ~48M parameters, 1 or 2 stacked LSTM layers."
)


def build(
    hidden: int = 1500,
    vocab: int = 10000,
    seq: int = 35,
    layers: int = 1,
    with_state: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """Build the LM: input ``tokens`` int64 ``[seq, 1]``, output ``logits [seq, 1, vocab]``.

    Each layer is one ONNX ``LSTM`` node with W ``[1, 4H, H]``, R ``[1, 4H, H]``, B ``[1, 8H]``
    (input size = hidden, since the embedding width is the hidden size). ``with_state=True``
    adds graph inputs ``initial_h`` / ``initial_c`` ``[layers, 1, hidden]`` and outputs
    ``h_n`` / ``c_n`` of the same shape, so a caller can carry state across segments.
    """
    from sparsekit.errors import SparsekitError

    check_int(hidden=hidden, vocab=vocab, seq=seq, layers=layers)
    check_bool(with_state=with_state)
    check_seed(seed)
    if layers > 2:
        raise SparsekitError(f"layers must be 1 or 2, got {layers}")
    g = GraphBuilder("lstm_lm", seed=seed)
    tokens = g.add_input("tokens", [seq, 1], TensorProto.INT64)
    state_shape = [layers, 1, hidden]
    if with_state:
        h0 = g.add_input("initial_h", state_shape)
        c0 = g.add_input("initial_c", state_shape)

    emb = g.initializer("encoder.weight", g.uniform((vocab, hidden), -0.1, 0.1))
    x = g.node("Gather", [emb, tokens], "encoder", axis=0)  # [seq, 1, H]

    bound = 1.0 / math.sqrt(hidden)
    squeeze_axes = g.constant([1], dtype="int64", name="num_directions_axis")
    finals_h, finals_c = [], []
    for layer in range(layers):
        name = f"rnn.{layer}" if layers > 1 else "rnn"
        w = g.initializer(f"{name}.W", g.uniform((1, 4 * hidden, hidden), -bound, bound))
        r = g.initializer(f"{name}.R", g.uniform((1, 4 * hidden, hidden), -bound, bound))
        b = g.initializer(f"{name}.B", g.uniform((1, 8 * hidden), -bound, bound))
        ins = [x, w, r, b]
        if with_state:
            if layers == 1:
                ins += ["", h0, c0]
            else:
                starts = g.constant([layer], dtype="int64", name=f"state_start_{layer}")
                ends = g.constant([layer + 1], dtype="int64", name=f"state_end_{layer}")
                axes = g.constant([0], dtype="int64", name="state_axis")
                ins += [
                    "",
                    g.node("Slice", [h0, starts, ends, axes], f"{name}.initial_h"),
                    g.node("Slice", [c0, starts, ends, axes], f"{name}.initial_c"),
                ]
            y, yh, yc = g.node("LSTM", ins, name, num_outputs=3, direction="forward", hidden_size=hidden)
            finals_h.append(yh)
            finals_c.append(yc)
        else:
            y = g.node("LSTM", ins, name, direction="forward", hidden_size=hidden)
        x = g.node("Squeeze", [y, squeeze_axes], f"{name}.Squeeze")  # [seq, 1, 1, H] -> [seq, 1, H]

    dec_w = g.initializer("decoder.weight", g.uniform((hidden, vocab), -0.1, 0.1))
    dec_b = g.initializer("decoder.bias", g.uniform((vocab,), -0.1, 0.1))
    y = g.node("MatMul", [x, dec_w], "decoder.MatMul")
    logits = g.node("Add", [y, dec_b], "decoder.Add", outputs=["logits"])
    g.add_output(logits, [seq, 1, vocab])
    if with_state:
        for out_name, finals in (("h_n", finals_h), ("c_n", finals_c)):
            if layers == 1:
                v = g.node("Identity", [finals[0]], out_name, outputs=[out_name])
            else:
                v = g.node("Concat", finals, out_name, outputs=[out_name], axis=0)
            g.add_output(v, state_shape)
    return finish(
        g,
        "lstm_lm",
        DESCRIPTION,
        hidden=hidden,
        vocab=vocab,
        seq=seq,
        layers=layers,
        with_state=with_state,
        seed=seed,
    )
