"""Peak memory of `sparsekit prune` and `sparsekit convert` on a large model with external data.

Generates a stack of MatMul layers (x[1, K] @ W[K, K], each weight in one side file, written
layer by layer so the generator itself stays small) in a scratch folder, then runs the CLI under
/usr/bin/time -v and reports each command's peak RSS against the model's size and its largest
weight. Also the zoo models (in-memory size). Nothing is written to the repository unless
--report is given (a Markdown table row per run, appended).

    python benchmarks/memory_external.py --gb 3 --dir /tmp/sk_mem
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def make_stack(folder: Path, gb: float, k: int, seed: int = 0) -> Path:
    """A MatMul stack of about `gb` GiB of float32 weights, data in stack.onnx.data."""
    folder.mkdir(parents=True, exist_ok=True)
    per = k * k * 4
    layers = max(1, int(round(gb * 2**30 / per)))
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    data = folder / "stack.onnx.data"
    with open(data, "wb") as f:
        for i in range(layers):
            w = (rng.standard_normal((k, k), dtype=np.float32) / np.sqrt(k)).astype(np.float32)
            offset = f.tell()
            w.tofile(f)
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[k, k],
                            data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", str(offset)),
                               ("length", str(per))):
                t.external_data.add(key=key, value=value)
            inits.append(t)
            nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"],
                                          name=f"fc{i}"))
    g = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, k])],
                          [helper.make_tensor_value_info(f"h{layers}", TensorProto.FLOAT, [1, k])],
                          inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "stack.onnx"
    onnx.save_model(model, str(path))
    return path


def peak_rss(cmd) -> tuple:
    """(peak RSS bytes, seconds, exit code) of a command, by /usr/bin/time -v."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-2000:])
    return (int(m.group(1)) * 1024 if m else None), secs, p.returncode


def model_bytes(path: Path) -> int:
    m = onnx.load(str(path), load_external_data=False)
    files = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)


def largest_tensor(path: Path) -> int:
    m = onnx.load(str(path), load_external_data=False)
    return max(int(np.prod(t.dims)) * 4 for t in m.graph.initializer)


def zoo(args) -> int:
    """prune + convert each full-size zoo model, saved with its weights in a side file."""
    from sparsekit import models
    sk = [sys.executable, "-m", "sparsekit"]
    args.dir.mkdir(parents=True, exist_ok=True)
    print("| model | size | largest weight | prune peak RSS | convert peak RSS |")
    print("|---|---|---|---|---|")
    for name in models.names():
        src = args.dir / f"{name}.onnx"
        onnx.save_model(models.build(name), str(src), save_as_external_data=True,
                        location=f"{name}.onnx.data", size_threshold=1024)
        size, big = model_bytes(src), largest_tensor(src)
        pruned, sparse = args.dir / f"{name}.pruned.onnx", args.dir / f"{name}.sparse.onnx"
        rp, _, rc1 = peak_rss(sk + ["prune", str(src), "-o", str(pruned), "--force"])
        rc, _, rc2 = peak_rss(sk + ["convert", str(pruned), "-o", str(sparse), "--force"])
        if rc1 or rc2:
            print(f"{name}: failed")
            continue
        print(f"| {name} | {size / 2**20:.0f} MiB | {big / 2**20:.1f} MiB | {rp / 2**20:.0f} MiB "
              f"({rp / size:.1f}x size, {rp / big:.0f}x weight) | {rc / 2**20:.0f} MiB "
              f"({rc / size:.1f}x size, {rc / big:.0f}x weight) |")
    if not args.keep:
        shutil.rmtree(args.dir)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=3.0, help="weights in GiB (default 3)")
    ap.add_argument("--k", type=int, default=4096, help="each layer's K x K weight (default 4096)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/sk_mem"))
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--report", type=Path, default=None, help="append Markdown rows here")
    ap.add_argument("--zoo", action="store_true",
                    help="measure the zoo models (saved with external data) instead of the stack")
    args = ap.parse_args()
    if args.zoo:
        return zoo(args)
    sk = [sys.executable, "-m", "sparsekit"]
    if args.dir.exists():
        shutil.rmtree(args.dir)
    src = make_stack(args.dir, args.gb, args.k)
    size, big = model_bytes(src), largest_tensor(src)
    rows = []
    pruned, sparse = args.dir / "pruned.onnx", args.dir / "sparse.onnx"
    for what, cmd, out in (
            ("prune", sk + ["prune", str(src), "-o", str(pruned), "--sparsity", str(args.sparsity)],
             pruned),
            ("convert", sk + ["convert", str(pruned), "-o", str(sparse)], sparse)):
        rss, secs, rc = peak_rss(cmd)
        if rc != 0:
            print(f"{what} failed (exit {rc})")
            return 1
        rows.append((what, rss, secs, model_bytes(out)))
    print(f"model {size / 2**30:.2f} GiB on disk, largest weight {big / 2**20:.0f} MiB, "
          f"{size // big} layers")
    print("| command | peak RSS | / model size | / largest weight | time | output size |")
    print("|---|---|---|---|---|---|")
    lines = []
    for what, rss, secs, out_size in rows:
        line = (f"| {what} | {rss / 2**20:.0f} MiB | {rss / size:.2f}x | {rss / big:.1f}x | "
                f"{secs:.0f} s | {out_size / 2**30:.2f} GiB |")
        lines.append(line)
        print(line)
    if args.report:
        with open(args.report, "a") as f:
            f.write(f"\n{size / 2**30:.2f} GiB MatMul stack ({size // big} x {args.k}x{args.k}), "
                    f"sparsity {args.sparsity}, {time.strftime('%Y-%m-%d %H:%M')}, "
                    f"{os.cpu_count()} cores:\n\n| command | peak RSS | / model size | "
                    "/ largest weight | time | output size |\n|---|---|---|---|---|---|\n"
                    + "\n".join(lines) + "\n")
    if not args.keep:
        shutil.rmtree(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
