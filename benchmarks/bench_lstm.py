"""One recurrent layer alone: onnxruntime's dense LSTM / GRU vs SparseLSTM / SparseGRU, per step
(not a test).

One ONNX LSTM (or GRU with --cell gru, linear_before_reset as --lbr) node (hidden 1500, input
1500, batch 1, forward: the zoo LM's layer), random weights pruned bank-balanced, converted;
both timed side by side (interleaved, medians) at each thread count and sequence length.
Per-step time = run time / seq.

    python benchmarks/bench_lstm.py --seq 35,1 --threads 1,2
    python benchmarks/bench_lstm.py --cell gru --lbr 1
"""
from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import sparsekit
from sparsekit import bench as B
from sparsekit import sessions
from sparsekit.timing import ratio


def rnn_model(hidden: int, inp: int, seq: int, cell: str = "lstm", lbr: int = 0,
              seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    b = 1.0 / np.sqrt(hidden)
    gates = 4 if cell == "lstm" else 3
    W = rng.uniform(-b, b, (1, gates * hidden, inp)).astype(np.float32)
    R = rng.uniform(-b, b, (1, gates * hidden, hidden)).astype(np.float32)
    Bv = rng.uniform(-b, b, (1, 2 * gates * hidden)).astype(np.float32)
    outs = ["Y", "Y_h", "Y_c"] if cell == "lstm" else ["Y", "Y_h"]
    attrs = {} if cell == "lstm" else {"linear_before_reset": lbr}
    node = helper.make_node(cell.upper(), ["X", "W", "R", "B"], outs, name=cell,
                            hidden_size=hidden, **attrs)
    g = helper.make_graph(
        [node], cell, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [seq, 1, inp])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outs],
        [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (Bv, "B"))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", type=int, default=1500)
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--bank-size", type=int, default=None)
    ap.add_argument("--seq", default="35,1")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    ap.add_argument("--lbr", type=int, choices=[0, 1], default=0,
                    help="GRU linear_before_reset (PyTorch exports 1)")
    args = ap.parse_args()
    print(f"{args.cell}, kernels {B.environment()['isa']}, hidden {args.hidden}, "
          f"sparsity {args.sparsity}, bank {args.bank_size or 'default'}"
          + (f", linear_before_reset {args.lbr}" if args.cell == "gru" else ""))
    for seq in (int(s) for s in args.seq.split(",")):
        dense = rnn_model(args.hidden, args.hidden, seq, args.cell, args.lbr)
        pruned, _ = sparsekit.prune(dense, "bank", args.sparsity, bank_size=args.bank_size)
        sparse, rep = sparsekit.convert(pruned)
        op = "SparseLSTM" if args.cell == "lstm" else "SparseGRU"
        assert any(n.op_type == op for n in sparse.graph.node), rep.layers
        feeds = {"X": np.random.default_rng(1).standard_normal((seq, 1, args.hidden))
                 .astype(np.float32)}
        err = B.max_relative_difference(pruned, sparse, feeds)
        for t in (int(x) for x in args.threads.split(",")):
            # pinned, TIMING_CONFIG, dense in stock onnxruntime, interleaved
            times = sessions.time_models(pruned, sparse, feeds, t, warmup=3, runs=args.runs)
            r = ratio(times["dense"], times["sparse"])
            dm = float(np.median(times["dense"])) / seq
            sm = float(np.median(times["sparse"])) / seq
            print(f"seq {seq:3d} {t}t  dense {dm:7.3f} ms/step  sparse {sm:7.3f} ms/step  "
                  f"{r['speedup']:5.2f}x  (max rel diff {err:.1e})", flush=True)


if __name__ == "__main__":
    main()
