"""The LSTM alone: onnxruntime's dense LSTM vs SparseLSTM, per step (not a test).

One ONNX LSTM node (hidden 1500, input 1500, batch 1, forward: the zoo LM's layer), random
weights pruned bank-balanced, converted; both timed side by side (interleaved, medians) at
each thread count and sequence length.  Per-step time = run time / seq.
"""
from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import sparsekit
from sparsekit import _native
from sparsekit import bench as B
from sparsekit.timing import interleaved, ratio


def lstm_model(hidden: int, inp: int, seq: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    b = 1.0 / np.sqrt(hidden)
    W = rng.uniform(-b, b, (1, 4 * hidden, inp)).astype(np.float32)
    R = rng.uniform(-b, b, (1, 4 * hidden, hidden)).astype(np.float32)
    Bv = rng.uniform(-b, b, (1, 8 * hidden)).astype(np.float32)
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h", "Y_c"], name="lstm",
                            hidden_size=hidden)
    g = helper.make_graph(
        [node], "lstm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [seq, 1, inp])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h", "Y_c")],
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
    args = ap.parse_args()
    print(f"kernels {_native.selected_isa()}, hidden {args.hidden}, "
          f"sparsity {args.sparsity}, bank {args.bank_size or 'default'}")
    for seq in (int(s) for s in args.seq.split(",")):
        dense = lstm_model(args.hidden, args.hidden, seq)
        pruned, _ = sparsekit.prune(dense, "bank", args.sparsity, bank_size=args.bank_size)
        sparse, rep = sparsekit.convert(pruned)
        assert any(n.op_type == "SparseLSTM" for n in sparse.graph.node), rep.layers
        feeds = {"X": np.random.default_rng(1).standard_normal((seq, 1, args.hidden))
                 .astype(np.float32)}
        err = B.max_relative_difference(pruned, sparse, feeds)
        for t in (int(x) for x in args.threads.split(",")):
            ds, ss = B.dense_session(pruned, t), B.sparse_session(sparse, t)
            times = interleaved({"dense": lambda ds=ds, feeds=feeds: ds.run(None, feeds),
                                 "sparse": lambda ss=ss, feeds=feeds: ss.run(None, feeds)},
                                warmup=3, runs=args.runs)
            r = ratio(times["dense"], times["sparse"])
            dm = float(np.median(times["dense"])) / seq
            sm = float(np.median(times["sparse"])) / seq
            print(f"seq {seq:3d} {t}t  dense {dm:7.3f} ms/step  sparse {sm:7.3f} ms/step  "
                  f"{r['speedup']:5.2f}x  (max rel diff {err:.1e})", flush=True)


if __name__ == "__main__":
    main()
