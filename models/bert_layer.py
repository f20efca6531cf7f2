"""One BERT-base encoder layer (Devlin et al. 2019) as a Hugging Face PyTorch export writes it."""
from __future__ import annotations

import math

import onnx

from ._graph import GraphBuilder, check_bool, check_int, check_seed, finish

DESCRIPTION = (
    "BERT-base encoder layer: hidden_states [1, seq, 768] -> Q/K/V (MatMul [768,768] + Add bias), "
    "Reshape/Transpose to 12 heads, MatMul Q.K^T, Div sqrt(64), Softmax, MatMul V, "
    "Transpose/Reshape back, output MatMul + bias, residual Add, LayerNormalization, FFN "
    "768->3072 + Erf-based Gelu + 3072->768, residual Add, LayerNormalization. 6 weight MatMuls "
    "+ 2 activation MatMuls, ~7.1M parameters."
)


def build(
    seq: int = 128,
    hidden: int = 768,
    heads: int = 12,
    ffn: int = 3072,
    symbolic_seq: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """Build one encoder layer: input ``hidden_states [1, seq, hidden]``, output ``output``.

    With ``symbolic_seq=True`` the sequence dim is the symbolic ``"seq"`` and the Reshapes use
    0 (copy) entries so one model runs at any length. Weights are N(0, 1/fan_in) so attention
    scores are neither uniform nor one-hot for unit-variance inputs.
    """
    from sparsekit.errors import SparsekitError

    check_int(seq=seq, hidden=hidden, heads=heads, ffn=ffn)
    check_bool(symbolic_seq=symbolic_seq)
    check_seed(seed)
    if hidden % heads:
        raise SparsekitError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    head_dim = hidden // heads
    g = GraphBuilder("bert_layer", seed=seed)
    seq_dim = "seq" if symbolic_seq else seq
    x = g.add_input("hidden_states", [1, seq_dim, hidden])

    def linear(x, name, fin, fout):
        # nn.Linear on a 3-D input exports as MatMul with the transposed weight, then Add bias
        w = g.initializer(f"{name}.weight", g.normal((fin, fout), 1.0 / math.sqrt(fin)))
        b = g.initializer(f"{name}.bias", g.normal((fout,), 0.02))
        y = g.node("MatMul", [x, w], f"{name}.MatMul")
        return g.node("Add", [y, b], f"{name}.Add")

    def layer_norm(x, name, output=None):
        scale = g.initializer(f"{name}.weight", g.normal((hidden,), 0.05, mean=1.0))
        shift = g.initializer(f"{name}.bias", g.normal((hidden,), 0.02))
        return g.node(
            "LayerNormalization", [x, scale, shift], name, outputs=[output] if output else None,
            axis=-1, epsilon=1e-12,
        )

    if symbolic_seq:
        to_heads = g.constant([0, 0, heads, head_dim], dtype="int64", name="shape_heads")
        from_heads = g.constant([0, 0, hidden], dtype="int64", name="shape_hidden")
    else:
        to_heads = g.constant([1, seq, heads, head_dim], dtype="int64", name="shape_heads")
        from_heads = g.constant([1, seq, hidden], dtype="int64", name="shape_hidden")

    a = "attention.self"
    heads_out = {}
    for part, perm in (("query", [0, 2, 1, 3]), ("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3])):
        y = linear(x, f"{a}.{part}", hidden, hidden)
        y = g.node("Reshape", [y, to_heads], f"{a}.{part}.Reshape")
        heads_out[part] = g.node("Transpose", [y], f"{a}.{part}.Transpose", perm=perm)
    # [1, h, seq, d] x [1, h, d, seq] -> [1, h, seq, seq]
    scores = g.node("MatMul", [heads_out["query"], heads_out["key"]], f"{a}.scores.MatMul")
    scale = g.constant(math.sqrt(head_dim), name="attention_scale")
    scores = g.node("Div", [scores, scale], f"{a}.scores.Div")
    probs = g.node("Softmax", [scores], f"{a}.Softmax", axis=-1)
    ctx = g.node("MatMul", [probs, heads_out["value"]], f"{a}.context.MatMul")
    ctx = g.node("Transpose", [ctx], f"{a}.context.Transpose", perm=[0, 2, 1, 3])
    ctx = g.node("Reshape", [ctx, from_heads], f"{a}.context.Reshape")

    y = linear(ctx, "attention.output.dense", hidden, hidden)
    y = g.node("Add", [y, x], "attention.output.residual")
    attn = layer_norm(y, "attention.output.LayerNorm")

    h = linear(attn, "intermediate.dense", hidden, ffn)
    # gelu(x) = x * 0.5 * (1 + erf(x / sqrt(2))), the subgraph torch.onnx writes for nn.GELU()
    e = g.node("Div", [h, g.constant(math.sqrt(2.0), name="sqrt2")], "intermediate.gelu.Div")
    e = g.node("Erf", [e], "intermediate.gelu.Erf")
    e = g.node("Add", [e, g.constant(1.0, name="one")], "intermediate.gelu.Add")
    h = g.node("Mul", [h, e], "intermediate.gelu.Mul")
    h = g.node("Mul", [h, g.constant(0.5, name="half")], "intermediate.gelu.Mul")

    y = linear(h, "output.dense", ffn, hidden)
    y = g.node("Add", [y, attn], "output.residual")
    out = layer_norm(y, "output.LayerNorm", output="output")
    g.add_output(out, [1, seq_dim, hidden])
    return finish(
        g,
        "bert_layer",
        DESCRIPTION,
        seq=seq,
        hidden=hidden,
        heads=heads,
        ffn=ffn,
        symbolic_seq=symbolic_seq,
        seed=seed,
    )

