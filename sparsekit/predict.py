"""Skipping the outputs ReLU will zero (SeerNet, CVPR 2019; docs/predict.md).

A Conv followed by ReLU (or Clip(0, hi)) throws away every negative output.  ``PredictedConv``
(ai.sparsekit) first predicts each output with 8-bit weights (per output channel, quantized
here, at convert time) and 7-bit activations (per image, at run time), then computes in full
precision only the outputs predicted positive; the rest are 0.  Outputs that are positive but
predicted otherwise are lost: that is the accuracy the per-layer decision weighs.

* :func:`quantize_rows`: symmetric int8 per row, |q| <= 127;
* :func:`make_predicted_conv_node`: the node and its initializers for an ONNX Conv weight.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import SparsekitError
from .pack import DOMAIN

__all__ = ["quantize_rows", "make_predicted_conv_node"]


def quantize_rows(W2d) -> Tuple[np.ndarray, np.ndarray]:
    """(q int8 [M, K], scale float32 [M]) with W ≈ q * scale[:, None], |q| <= 127."""
    W = np.asarray(W2d, np.float32)
    if W.ndim != 2:
        raise SparsekitError(f"expected a 2-D weight, got shape {list(W.shape)}")
    amax = np.abs(W).max(axis=1)
    scale = (amax / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(W / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale


def make_predicted_conv_node(name: str, x: str, y: str, weight, bias=None, *,
                             strides: Sequence[int] = (1, 1),
                             pads: Sequence[int] = (0, 0, 0, 0),
                             dilations: Sequence[int] = (1, 1), activation: str = "relu",
                             clip_max: Optional[float] = None
                             ) -> Tuple[onnx.NodeProto, List[onnx.TensorProto]]:
    """A PredictedConv node for an ONNX Conv weight [M, C, kh, kw] (group 1) followed by ReLU
    (``activation="relu"``) or Clip(0, clip_max) (``"clip"``).  pads are ONNX-ordered
    [top, left, bottom, right].  Returns (node, initializers named ``<name>.W`` etc.)."""
    w = np.asarray(weight, np.float32)
    if w.ndim != 4:
        raise SparsekitError(f"expected a Conv weight [M, C, kh, kw], got shape {list(w.shape)}")
    if activation not in ("relu", "clip"):
        raise SparsekitError(f"activation must be 'relu' or 'clip', got {activation!r}")
    M = w.shape[0]
    q, scale = quantize_rows(w.reshape(M, -1))
    inits = [numpy_helper.from_array(w, f"{name}.W")]
    inputs = [x, f"{name}.W", "", f"{name}.W_q", f"{name}.W_q_scale"]
    if bias is not None:
        b = np.asarray(bias, np.float32).reshape(-1)
        if b.shape != (M,):
            raise SparsekitError(f"bias has shape {list(b.shape)}, expected [{M}]")
        inits.append(numpy_helper.from_array(b, f"{name}.B"))
        inputs[2] = f"{name}.B"
    inits += [numpy_helper.from_array(q, f"{name}.W_q"),
              numpy_helper.from_array(scale, f"{name}.W_q_scale")]
    attrs = dict(kernel_shape=[int(w.shape[2]), int(w.shape[3])], strides=list(strides),
                 pads=list(pads), dilations=list(dilations), activation=activation)
    if activation == "clip":
        attrs.update(clip_min=0.0, clip_max=float(np.inf if clip_max is None else clip_max))
    node = helper.make_node("PredictedConv", inputs, [y], name=name, domain=DOMAIN, **attrs)
    return node, inits
