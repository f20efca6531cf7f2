"""A small CNN trained on real labelled data (scikit-learn's 8x8 digits), kept as a test fixture.

Unlike the zoo's random-weight builders, this model has a meaningful accuracy, so it can show
what one-shot pruning costs.  The committed fixtures are ``tests/data/digits_cnn.onnx`` (the
trained model) and ``tests/data/digits.npz`` (the data and its split); only
``python -m models.digits train`` needs torch and scikit-learn, everything else needs only
numpy, onnx and onnxruntime.

Data: the 1797 images of ``sklearn.datasets.load_digits`` (pixel values 0..16, 10 classes).
Split: ``numpy.random.default_rng(0).permutation(1797)``; the first 1197 indices are the
training set, the last 600 the test set (in that order).  Inputs are scaled to x / 16.

Architecture (NCHW, input ``input`` [batch, 1, 8, 8], output ``logits`` [batch, 10]):
conv1 3x3 pad 1 1->32, Relu; conv2 3x3 pad 1 32->64, Relu; MaxPool 2x2 (-> 4x4);
conv3 3x3 pad 1 64->64, Relu; Flatten (1024); fc1 Gemm 1024->128, Relu; fc2 Gemm 128->10.

    python -m models.digits train --out tests/data     # retrain, check ONNX == torch, write both
    python -m models.digits evaluate MODEL.onnx         # test top-1 of a (pruned) copy
"""
from __future__ import annotations

import argparse
import io
import time
import zipfile
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import onnx
from onnx import TensorProto

from ._graph import GraphBuilder

NUM_IMAGES, NUM_TRAIN, NUM_TEST = 1797, 1197, 600
SPLIT_SEED = 0
DATA_FILE = "digits.npz"
MODEL_FILE = "digits_cnn.onnx"
DEFAULT_DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / DATA_FILE
DEFAULT_EPOCHS = 40
LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")

Params = Dict[str, np.ndarray]


# ---------------------------------------------------------------------- data
def _raw_from_sklearn() -> Dict[str, np.ndarray]:
    """The npz payload: uint8 pixels and labels plus the split (keeps the fixture ~50 KB)."""
    from sklearn.datasets import load_digits  # bundled with the wheel, no download

    d = load_digits()
    images = d.images.astype(np.uint8)  # integer counts 0..16 stored as float64
    assert images.shape == (NUM_IMAGES, 8, 8) and images.max() == 16
    perm = np.random.default_rng(SPLIT_SEED).permutation(NUM_IMAGES)
    return {"images": images, "labels": d.target.astype(np.uint8),
            "train_idx": perm[:NUM_TRAIN].astype(np.int16), "test_idx": perm[NUM_TRAIN:].astype(np.int16)}


def _to_arrays(raw: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    out = {}
    for split in ("train", "test"):
        idx = raw[f"{split}_idx"].astype(np.int64)
        out[f"{split}_x"] = (raw["images"][idx].astype(np.float32) / np.float32(16))[:, None]
        out[f"{split}_y"] = raw["labels"][idx].astype(np.int64)
    return out


def load_data(path: Union[str, Path, None] = None) -> Dict[str, np.ndarray]:
    """train_x [1197,1,8,8] / test_x [600,1,8,8] float32 in [0, 1]; train_y / test_y int64."""
    p = Path(path) if path is not None else DEFAULT_DATA
    if not p.is_file():
        from sparsekit.errors import SparsekitError

        raise SparsekitError(f"{p}: no such file (run `python -m models.digits train --out DIR`)")
    with np.load(p) as f:
        return _to_arrays({k: f[k] for k in f.files})


def _save_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """np.savez_compressed stamps the current time into the zip; fixed stamps keep reruns identical."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


# ---------------------------------------------------------------------- torch (training only)
def _torch_net():
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
            self.fc1 = nn.Linear(64 * 4 * 4, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            x = torch.relu(self.conv3(nn.functional.max_pool2d(x, 2)))
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))  # NCHW flatten == ONNX Flatten

    return DigitsCNN()


def _deterministic(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    # One thread fixes the order of every float reduction, so a rerun on the same torch build
    # and CPU reproduces the weights bit for bit (the net is tiny; training takes seconds).
    torch.set_num_threads(1)


def _shift(x, gen):
    """Random translation by up to one pixel each way (zero fill): digits are not all centred."""
    import torch

    n = x.shape[0]
    padded = torch.nn.functional.pad(x[:, 0], (1, 1, 1, 1))  # [n, 10, 10]
    dy, dx = torch.randint(0, 3, (2, n), generator=gen)
    rows = (torch.arange(8)[None, :] + dy[:, None])[:, :, None]  # [n, 8, 1]
    cols = (torch.arange(8)[None, :] + dx[:, None])[:, None, :]  # [n, 1, 8]
    return padded[torch.arange(n)[:, None, None], rows, cols][:, None]


def train(epochs: int = DEFAULT_EPOCHS, seed: int = 0, data: Optional[Dict[str, np.ndarray]] = None,
          batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-4, augment: bool = True,
          verbose: bool = False) -> Params:
    """Train on the training split; returns float32 numpy params keyed like ``conv1.weight``.

    Adam with a cosine learning-rate decay to zero and a little weight decay (which also keeps
    weight magnitudes meaningful for magnitude pruning).  The hyperparameters were fixed up front
    and not tuned on the test split (there is no separate validation split).
    """
    import torch

    data = data if data is not None else _to_arrays(_raw_from_sklearn())
    _deterministic(seed)
    net = _torch_net()
    x = torch.from_numpy(data["train_x"])
    y = torch.from_numpy(data["train_y"])
    gen = torch.Generator().manual_seed(seed)  # shuffling and augmentation, independent of init
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for epoch in range(epochs):
        net.train()
        total = 0.0
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            xb = _shift(x[idx], gen) if augment else x[idx]
            loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if verbose and (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  loss {total / len(x):.4f}")
    return {k: v.detach().numpy().astype(np.float32).copy() for k, v in net.state_dict().items()}


def _torch_logits(params: Params, x: np.ndarray) -> np.ndarray:
    import torch

    net = _torch_net()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------------- onnx
def export(params: Params, metadata: Optional[Dict[str, object]] = None) -> onnx.ModelProto:
    """The trained net as plain ONNX (opset 17, IR 8): Conv/Relu/MaxPool/Flatten/Gemm only."""
    g = GraphBuilder("digits_cnn")
    p = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}

    def wb(name: str):
        return [g.initializer(f"{name}.{k}", p[f"{name}.{k}"]) for k in ("weight", "bias")]

    def conv(x: str, name: str) -> str:
        return g.node("Conv", [x, *wb(name)], name, dilations=[1, 1], group=1, kernel_shape=[3, 3],
                      pads=[1, 1, 1, 1], strides=[1, 1])

    def gemm(x: str, name: str, outputs=None) -> str:
        return g.node("Gemm", [x, *wb(name)], name, outputs=outputs, alpha=1.0, beta=1.0, transB=1)

    x = g.add_input("input", ["batch", 1, 8, 8])
    x = g.relu(conv(x, "conv1"), "relu1")
    x = g.relu(conv(x, "conv2"), "relu2")
    x = g.maxpool(x, "pool", kernel=2, stride=2, pad=0)
    x = g.relu(conv(x, "conv3"), "relu3")
    x = g.relu(gemm(g.flatten(x), "fc1"), "relu4")
    g.add_output(gemm(x, "fc2", outputs=["logits"]), ["batch", 10], TensorProto.FLOAT)
    meta = {"sparsekit.fixture": "digits_cnn", **(metadata or {})}
    model = g.build(doc_string=__doc__.split("\n\n")[0], metadata=meta)
    # strict inference catches a wiring mistake here; its value_info helps later shape queries
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    model.graph.value_info.extend(inferred.graph.value_info)
    onnx.checker.check_model(model, full_check=True)
    return model


def _logits(model_or_path, x: np.ndarray) -> np.ndarray:
    from sparsekit import session  # registers the ai.sparsekit ops, so converted copies run too

    sess = session(model_or_path)
    return sess.run([sess.get_outputs()[0].name], {sess.get_inputs()[0].name: x})[0]


def accuracy(model_or_path, split: str = "test", data: Optional[Dict[str, np.ndarray]] = None) -> float:
    """Top-1 accuracy in onnxruntime of a model with input [N,1,8,8] and logits [N,10]."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = data if data is not None else load_data()
    pred = _logits(model_or_path, data[f"{split}_x"]).argmax(axis=1)
    return float((pred == data[f"{split}_y"]).mean())


# ---------------------------------------------------------------------- cli
def _cmd_train(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = _raw_from_sklearn()
    data = _to_arrays(raw)
    t0 = time.perf_counter()
    params = train(epochs=args.epochs, seed=args.seed, data=data, verbose=True)
    seconds = time.perf_counter() - t0
    acc = {}
    for split in ("train", "test"):
        t_pred = _torch_logits(params, data[f"{split}_x"]).argmax(axis=1)
        acc[split] = float((t_pred == data[f"{split}_y"]).mean())
    model = export(params, {"epochs": args.epochs, "seed": args.seed,
                            "train_accuracy": f"{acc['train']:.4f}", "test_accuracy": f"{acc['test']:.4f}"})
    # the exported graph must be the trained net: identical predictions on every image
    for split in ("train", "test"):
        t_logits = _torch_logits(params, data[f"{split}_x"])
        o_logits = _logits(model, data[f"{split}_x"])
        diff = float(np.abs(t_logits - o_logits).max())
        if not np.array_equal(t_logits.argmax(1), o_logits.argmax(1)):
            raise SystemExit(f"ONNX and torch predictions differ on {split} (max |logit diff| {diff:.2e})")
        print(f"{split}: onnxruntime predictions == torch (max |logit diff| {diff:.2e})")
    _save_npz(out / DATA_FILE, raw)
    onnx.save(model, str(out / MODEL_FILE))
    assert accuracy(out / MODEL_FILE, data=load_data(out / DATA_FILE)) == acc["test"]
    print(f"trained {args.epochs} epochs in {seconds:.1f} s: "
          f"train {acc['train']:.4f}, test {acc['test']:.4f}")
    print(f"wrote {out / MODEL_FILE} and {out / DATA_FILE}")


def _cmd_evaluate(args) -> None:
    data = load_data(args.data)
    acc = accuracy(args.model, args.split, data)
    n = len(data[f"{args.split}_y"])
    print(f"{args.split} top-1: {acc:.4f} ({round(acc * n)}/{n})")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m models.digits", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train, verify and write the ONNX model and the data fixture")
    t.add_argument("--out", default=str(DEFAULT_DATA.parent), help="output folder (default tests/data)")
    t.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("evaluate", help="top-1 accuracy of MODEL in onnxruntime")
    e.add_argument("model")
    e.add_argument("--split", choices=("train", "test"), default="test")
    e.add_argument("--data", default=None, help=f"the npz fixture (default {DEFAULT_DATA})")
    e.set_defaults(func=_cmd_evaluate)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
