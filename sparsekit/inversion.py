"""Images synthesised from the teacher alone (model inversion, after DeepInversion, Yin et al.
2020): widening the training data beyond the user's photos.

Fine-tuning learns the teacher's function only where its inputs go (docs/finetune.md), and a
few photos show a few classes. Here random images are optimised, with the teacher's weights
fixed, until (a) the per-channel mean and variance of the activations feeding every
BatchNormalization match that node's running statistics, which the teacher learnt on its own
training set, (b) the teacher gives each image a chosen class (drawn uniformly over its
classes, so the images cover classes the photos do not show), and (c) the image is smooth
(total variation) and bounded. Each step sees the batch shifted by a few pixels and flipped at
random, so no single pixel grid is fitted. A teacher without BatchNormalization nodes (folded
already) uses the statistics of its Conv outputs measured on the real training images instead.

The images come back as uint8 photos, which fine-tuning adds to its pool of photos: they get the
same crops, flips and mixing as the real ones. Needs torch (imported by fine-tuning only).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from .errors import SparsekitError
from .graph import ONNX_DOMAINS, initializer_map, tensor_to_array
from .torch_graph import OnnxModule

__all__ = ["Inversion", "statistic_targets", "invert_images"]

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# Loss weights and step size: DeepInversion's ImageNet settings for the statistics (0.01, the
# first layer's term x10), Adam lr 0.25 with a cosine decay and the random shift (30 pixels at
# 224); it runs 2-3k steps on batches of ~150 at 224, which a 2-core CPU cannot, so here the
# images start smooth (noise at 1/8 of the size, upsampled) and the smoothness prior is the
# mean squared difference between neighbours, weighted so that pixel noise costs about as much
# as the class term (100-step images at 160 pixels, MobileNetV2, were noise-like with the
# paper's 1e-4 on norms over the batch).
STAT_WEIGHT = 0.01
FIRST_STAT_FACTOR = 10.0
TV_WEIGHT = 0.1
L2_WEIGHT = 1e-3
LR = 0.25
SHIFT = 30 / 224
INIT_SCALE = 8


class Inversion:
    """What the images are optimised to match: (tensor name, per-channel mean, variance)."""

    def __init__(self, targets: List[Tuple[str, torch.Tensor, torch.Tensor]], source: str):
        self.targets = targets
        self.source = source        # "batchnorm" or "measured"


def statistic_targets(model: onnx.ModelProto, module: Optional[OnnxModule] = None,
                      real: Optional[Dict[str, torch.Tensor]] = None) -> Inversion:
    """The BatchNormalization nodes' running statistics of their inputs; without any, those of
    every Conv output measured on ``real`` (a batch of training inputs) with ``module``."""
    inits = initializer_map(model)
    bn = []
    for n in model.graph.node:
        if n.domain in ONNX_DOMAINS and n.op_type == "BatchNormalization" and len(n.input) >= 5 \
                and n.input[3] in inits and n.input[4] in inits:
            mean = torch.from_numpy(tensor_to_array(inits[n.input[3]]).astype(np.float32))
            var = torch.from_numpy(tensor_to_array(inits[n.input[4]]).astype(np.float32))
            bn.append((n.input[0], mean.reshape(-1), var.reshape(-1)))
    if bn:
        return Inversion(bn, "batchnorm")
    convs = [n.output[0] for n in model.graph.node
             if n.domain in ONNX_DOMAINS and n.op_type == "Conv"]
    if not convs or module is None or real is None:
        raise SparsekitError("model inversion needs BatchNormalization nodes in the teacher or "
                             "Conv layers and training images to measure their statistics")
    with torch.no_grad():
        out = module(real, convs)
    measured = []
    for name in convs:
        v = out[name]
        if v.dim() == 4:
            measured.append((name, v.mean(dim=(0, 2, 3)), v.var(dim=(0, 2, 3), unbiased=False)))
    return Inversion(measured, "measured")


def _tv_l2(x: torch.Tensor) -> torch.Tensor:
    """Mean squared differences between neighbours: down, right and both diagonals."""
    return (((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean()
            + ((x[..., 1:, 1:] - x[..., :-1, :-1]) ** 2).mean()
            + ((x[..., 1:, :-1] - x[..., :-1, 1:]) ** 2).mean())


def invert_images(model: onnx.ModelProto, n: int, size: Tuple[int, int], *, steps: int = 200,
                  batch_size: int = 32, inversion: Optional[Inversion] = None,
                  real: Optional[Dict[str, torch.Tensor]] = None, seed: int = 0,
                  device: str = "cpu", progress: Optional[Callable[[int, int, float], None]] = None
                  ) -> Tuple[List[torch.Tensor], dict]:
    """``n`` images of ``size`` (H, W) for an ImageNet-normalised image classifier ``model``:
    (uint8 [3, H, W] photos, facts: the loss before/after, seconds, statistics source, and
    ``targets``, the class each image was made for, or None for a model without class scores).
    ``progress(step done, steps total, loss)``."""
    if n < 1 or steps < 1 or batch_size < 1:
        raise SparsekitError(f"inversion needs n, steps and batch_size >= 1, got {n}, {steps}, "
                             f"{batch_size}")
    inputs = [i.name for i in model.graph.input
              if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise SparsekitError(f"model inversion needs a model with one image input, got {inputs}")
    module = OnnxModule(model).eval().channels_last()
    for p in module.parameters():
        p.requires_grad_(False)
    inv = inversion or statistic_targets(model, module, real)
    dev = torch.device(device)
    module = module.to(dev)
    stats = [(name, mean.to(dev), var.to(dev)) for name, mean, var in inv.targets]
    names = [t[0] for t in inv.targets]
    out_name = module.outputs[0]
    gen = torch.Generator().manual_seed(seed)
    H, W = size
    shift = max(1, int(round(SHIFT * min(H, W))))
    lo, hi = ((0 - _MEAN) / _STD).to(dev), ((1 - _MEAN) / _STD).to(dev)
    photos: List[torch.Tensor] = []
    total = steps * ((n + batch_size - 1) // batch_size)
    done, first, last, t0 = 0, None, None, time.perf_counter()
    classes = None
    targets: List[int] = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        coarse = torch.randn(b, 3, max(1, H // INIT_SCALE), max(1, W // INIT_SCALE), generator=gen)
        x = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False).to(dev)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=LR, betas=(0.5, 0.9))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        target = None
        for _ in range(steps):
            dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
            xs = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            if torch.rand(1, generator=gen).item() < 0.5:
                xs = xs.flip(-1)
            out = module({inputs[0]: xs}, names)
            logits = out[out_name]
            if target is None:
                classes = logits.shape[-1] if logits.dim() == 2 else None
                if classes is not None and classes > 1:
                    target = torch.randint(0, classes, (b,), generator=gen).to(dev)
            stat = logits.new_zeros(())
            for k, (name, mean, var) in enumerate(stats):
                a = out[name]
                dims = [d for d in range(a.dim()) if d != 1]     # all but the channels
                m = a.mean(dim=dims)
                v = a.var(dim=dims, unbiased=False)
                term = torch.norm(m - mean, 2) + torch.norm(v - var, 2)
                stat = stat + term * (FIRST_STAT_FACTOR if k == 0 else 1.0)
            loss = STAT_WEIGHT * stat + TV_WEIGHT * _tv_l2(xs) + L2_WEIGHT * xs.pow(2).mean()
            if target is not None:
                loss = loss + F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
            value = float(loss.detach())
            first = value if first is None else first
            last = value
            done += 1
            if progress:
                progress(done, total, value)
        with torch.no_grad():
            img = (x.detach().cpu() * _STD + _MEAN).clamp(0, 1).mul(255).round().to(torch.uint8)
        photos.extend(img[i].contiguous() for i in range(b))
        if target is not None:
            targets.extend(target.cpu().tolist())
    return photos, {"images": n, "steps": steps, "seconds": time.perf_counter() - t0,
                    "statistics": inv.source, "layers": len(inv.targets), "classes": classes,
                    "loss_first": first, "loss_last": last, "targets": targets or None}
