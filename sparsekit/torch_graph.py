"""An ONNX graph run by PyTorch, with its float initializers as trainable parameters.

Fine-tuning (:mod:`sparsekit.finetune`) needs gradients through the model, and the ONNX graph is
the source of truth: rather than translating it into a different module structure (and then
mapping weights back through transposes and folds), :class:`OnnxModule` evaluates the graph's own
nodes in order with torch ops that follow the ONNX operator definitions, and holds one parameter
per initializer, in the initializer's own layout. Writing the trained values back is then a copy
per initializer, exact by construction; a weight shared by two nodes is one parameter.

torch is an optional dependency (``pip install 'sparsekit[train]'``): this module is imported only
by fine-tuning, never by the rest of the package.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from .errors import SparsekitError
from .graph import ONNX_DOMAINS, get_attr, initializer_map, resolve_pads

__all__ = ["OnnxModule", "WEIGHT_SLOTS", "trainable_initializers"]

# input positions that hold a layer's learnable tensors; an initializer fed to one of them (and
# holding more than one value: scalars there are constants such as GELU's 0.5) is trained
PARAM_SLOTS: Dict[str, Sequence[int]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
    "Add": (0, 1), "Sub": (0, 1), "Mul": (0, 1), "BatchNormalization": (1, 2),
    "LayerNormalization": (1, 2), "InstanceNormalization": (1, 2), "PRelu": (1,),
    "LSTM": (1, 2, 3, 7), "GRU": (1, 2, 3),
}
# the weight slots among them: their zeros are the pruning pattern and stay zero
WEIGHT_SLOTS: Dict[str, Sequence[int]] = {
    "Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1), "LSTM": (1, 2), "GRU": (1, 2),
}


def trainable_initializers(model: onnx.ModelProto) -> Dict[str, bool]:
    """Float32 initializer name -> whether it is a weight slot (pattern kept) for every tensor that
    fine-tuning trains; everything else stays a constant."""
    inits = initializer_map(model)
    out: Dict[str, bool] = {}
    for n in model.graph.node:
        if n.domain not in ONNX_DOMAINS:
            continue
        for pos in PARAM_SLOTS.get(n.op_type, ()):
            if pos >= len(n.input) or n.input[pos] not in inits:
                continue
            t = inits[n.input[pos]]
            if t.data_type != onnx.TensorProto.FLOAT or int(np.prod(t.dims)) <= 1:
                continue
            if not np.isfinite(numpy_helper.to_array(t)).all():   # e.g. a -inf attention mask
                continue
            out[t.name] = out.get(t.name, False) or pos in WEIGHT_SLOTS.get(n.op_type, ())
    return out


# --------------------------------------------------------------------------- helpers

_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool,
}


def _torch_dtype(onnx_type: int):
    if onnx_type not in _DTYPES:
        raise SparsekitError(f"tensor type {onnx.TensorProto.DataType.Name(onnx_type)} is not supported "
                             "by fine-tuning")
    return _DTYPES[onnx_type]


def _ints(t) -> List[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _opt(inputs, i):
    """Input i, or None when it is absent or given as the empty name."""
    return inputs[i] if i < len(inputs) else None


def _spatial_pads(node, x, kernel, strides, dil) -> List[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] for this input, auto_pad resolved."""
    pads, why = resolve_pads(node, list(x.shape[2:]), kernel, strides, dil)
    if pads is None:
        raise SparsekitError(f"{node.op_type} {node.name!r}: {why}")
    return pads


def _pad_input(x, pads: List[int], value: float = 0.0):
    """Apply ONNX-ordered spatial pads with F.pad (which takes the last dim first)."""
    nsp = len(pads) // 2
    if not any(pads):
        return x
    torch_pads: List[int] = []
    for i in reversed(range(nsp)):
        torch_pads += [pads[i], pads[i + nsp]]
    return F.pad(x, torch_pads, value=value)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


# --------------------------------------------------------------------------- operators
# Each takes (node, opset, inputs) and returns a tuple of outputs. Attributes are read per call:
# get_attr is a dict-free scan of a handful of attributes, negligible next to the tensor work.

def _conv(node, opset, inp):
    x, w, b = inp[0], inp[1], _opt(inp, 2)
    nsp = x.dim() - 2
    kernel = list(get_attr(node, "kernel_shape", w.shape[2:]))
    strides = list(get_attr(node, "strides", [1] * nsp))
    dil = list(get_attr(node, "dilations", [1] * nsp))
    pads = _spatial_pads(node, x, kernel, strides, dil)
    if pads[:nsp] == pads[nsp:]:    # symmetric: the convolution pads without a copy
        return (_CONV[nsp](x, w, b, strides, pads[:nsp], dil, int(get_attr(node, "group", 1))),)
    return (_CONV[nsp](_pad_input(x, pads), w, b, strides, 0, dil, int(get_attr(node, "group", 1))),)


def _gemm(node, opset, inp):
    a, b, c = inp[0], inp[1], _opt(inp, 2)
    if get_attr(node, "transA", 0):
        a = a.t()
    if get_attr(node, "transB", 0):
        b = b.t()
    y = a @ b
    alpha, beta = float(get_attr(node, "alpha", 1.0)), float(get_attr(node, "beta", 1.0))
    if alpha != 1.0:
        y = y * alpha
    if c is not None and beta != 0.0:
        y = y + (c * beta if beta != 1.0 else c)
    return (y,)


def _clip(node, opset, inp):
    if opset < 11:
        lo, hi = get_attr(node, "min", None), get_attr(node, "max", None)
    else:
        lo, hi = _opt(inp, 1), _opt(inp, 2)
        lo = None if lo is None else float(lo)
        hi = None if hi is None else float(hi)
    if lo == 0.0 and hi is None:
        return (torch.relu(inp[0]),)
    if lo is not None and hi is not None:   # one fused kernel forward and backward (ReLU6)
        return (F.hardtanh(inp[0], lo, hi),)
    return (torch.clamp(inp[0], lo, hi),)


def _batchnorm(node, opset, inp):
    x, scale, bias, mean, var = inp[:5]
    eps = float(get_attr(node, "epsilon", 1e-5))
    return (F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps),)


def _layernorm(node, opset, inp):
    x, scale, bias = inp[0], inp[1], _opt(inp, 2)
    axis = int(get_attr(node, "axis", -1)) % x.dim()
    eps = float(get_attr(node, "epsilon", 1e-5))
    shape = list(x.shape[axis:])
    return (F.layer_norm(x, shape, scale.expand(shape) if scale.shape != tuple(shape) else scale,
                         None if bias is None else bias.expand(shape), eps),)


def _softmax_like(fn):
    def op(node, opset, inp):
        x = inp[0]
        if opset < 13:   # the old definition flattens to 2-D at axis (default 1)
            axis = int(get_attr(node, "axis", 1)) % x.dim()
            return (fn(x.reshape(int(np.prod(x.shape[:axis])), -1), dim=1).reshape(x.shape),)
        return (fn(x, dim=int(get_attr(node, "axis", -1))),)
    return op


def _pool(kind):
    def op(node, opset, inp):
        x = inp[0]
        nsp = x.dim() - 2
        kernel = list(get_attr(node, "kernel_shape"))
        strides = list(get_attr(node, "strides", [1] * nsp))
        dil = list(get_attr(node, "dilations", [1] * nsp))
        ceil = bool(get_attr(node, "ceil_mode", 0))
        pads = _spatial_pads(node, x, kernel, strides, dil)
        if kind == "max":
            sym = pads[:nsp] == pads[nsp:] and all(2 * p <= k for p, k in zip(pads[:nsp], kernel))
            if sym:
                return (_MAXPOOL[nsp](x, kernel, strides, pads[:nsp], dil, ceil),)
            return (_MAXPOOL[nsp](_pad_input(x, pads, -math.inf), kernel, strides, 0, dil, ceil),)
        if any(d != 1 for d in dil):
            raise SparsekitError(f"{node.op_type} {node.name!r}: dilations are not supported")
        include = bool(get_attr(node, "count_include_pad", 0))
        xp = _pad_input(x, pads)
        sums = _AVGPOOL[nsp](xp, kernel, strides, 0, ceil) * float(np.prod(kernel))
        ones = _pad_input(torch.ones_like(x[:1, :1]), pads, 1.0 if include else 0.0)
        counts = _AVGPOOL[nsp](ones, kernel, strides, 0, ceil) * float(np.prod(kernel))
        return (sums / counts,)
    return op


def _global_pool(fn):
    def op(node, opset, inp):
        x = inp[0]
        return (fn(x, dim=tuple(range(2, x.dim())), keepdim=True),)
    return op


def _flatten(node, opset, inp):
    x = inp[0]
    axis = int(get_attr(node, "axis", 1)) % (x.dim() + 1) if x.dim() else 0
    return (x.reshape(int(np.prod(x.shape[:axis])), -1),)


def _reshape(node, opset, inp):
    x, shape = inp[0], _ints(inp[1]) if opset >= 5 else list(get_attr(node, "shape"))
    if not get_attr(node, "allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return (x.reshape(shape),)


def _axes(node, opset, inp, pos, since):
    """Axes from the attribute (before opset ``since``) or input ``pos``; None when absent."""
    if opset < since:
        a = get_attr(node, "axes", None)
        return None if a is None else list(a)
    t = _opt(inp, pos)
    return None if t is None else _ints(t)


def _squeeze(node, opset, inp):
    x = inp[0]
    axes = _axes(node, opset, inp, 1, 13)
    if axes is None:
        return (x.squeeze(),)
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return (x,)


def _unsqueeze(node, opset, inp):
    x = inp[0]
    axes = _axes(node, opset, inp, 1, 13)
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return (x,)


def _reduce(fn, axes_input_since=18):
    def op(node, opset, inp):
        x = inp[0]
        since = 13 if node.op_type == "ReduceSum" else axes_input_since
        axes = _axes(node, opset, inp, 1, since)
        keep = bool(get_attr(node, "keepdims", 1))
        if not axes:
            if get_attr(node, "noop_with_empty_axes", 0) and axes is not None:
                return (x,)
            axes = list(range(x.dim()))
        return (fn(x, [a % x.dim() for a in axes], keep),)
    return op


def _reduce_max(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = x.amax(dim=d, keepdim=keep)
    return x


def _concat(node, opset, inp):
    return (torch.cat([t for t in inp if t is not None], dim=int(get_attr(node, "axis"))),)


def _split(node, opset, inp):
    x = inp[0]
    axis = int(get_attr(node, "axis", 0)) % x.dim()
    n = len(node.output)
    if opset >= 13:
        sizes = None if _opt(inp, 1) is None else _ints(inp[1])
    else:
        sizes = get_attr(node, "split", None)
    if sizes is None:
        size = x.shape[axis]
        chunk = -(-size // n)
        sizes = [min(chunk, size - i * chunk) for i in range(n)]
    return tuple(torch.split(x, list(sizes), dim=axis))


def _slice(node, opset, inp):
    x = inp[0]
    if opset < 10:
        starts, ends = list(get_attr(node, "starts")), list(get_attr(node, "ends"))
        axes = list(get_attr(node, "axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(inp[1]), _ints(inp[2])
        axes = _ints(inp[3]) if _opt(inp, 3) is not None else list(range(len(starts)))
        steps = _ints(inp[4]) if _opt(inp, 4) is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= x.dim()
        size = x.shape[a]
        if st < 0:   # torch slices have no negative steps: gather the indices ONNX defines
            s = min(max(s + size if s < 0 else s, 0), size - 1)
            e = min(max(e + size if e < 0 else e, -1), size - 1)
            x = x.index_select(a, torch.arange(s, e, st, device=x.device))
            continue
        index[a] = slice(s, e, st)   # Python's clamping of out-of-range bounds is ONNX's
    return (x[tuple(index)],)


def _gather(node, opset, inp):
    x, idx = inp
    axis = int(get_attr(node, "axis", 0)) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).long()
    out = x.index_select(axis, idx.reshape(-1))
    return (out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:])),)


def _shape(node, opset, inp):
    s = list(inp[0].shape)
    start, end = int(get_attr(node, "start", 0)), get_attr(node, "end", None)
    s = s[start:] if end is None else s[start:int(end)]
    return (torch.tensor(s, dtype=torch.int64, device=inp[0].device),)


def _cast(node, opset, inp):
    return (inp[0].to(_torch_dtype(int(get_attr(node, "to")))),)


def _transpose(node, opset, inp):
    x = inp[0]
    perm = get_attr(node, "perm", None)
    return (x.permute(*(list(perm) if perm is not None else reversed(range(x.dim())))),)


def _pad(node, opset, inp):
    x = inp[0]
    mode = get_attr(node, "mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if opset < 11:
        pads, value = list(get_attr(node, "pads")), float(get_attr(node, "value", 0.0))
        axes = list(range(x.dim()))
    else:
        pads = _ints(inp[1])
        value = float(inp[2]) if _opt(inp, 2) is not None and inp[2].numel() else 0.0
        axes = _ints(inp[3]) if _opt(inp, 3) is not None else list(range(x.dim()))
    n = len(axes)
    full = {a % x.dim(): (pads[i], pads[i + n]) for i, a in enumerate(axes) if pads[i] or pads[i + n]}
    torch_pads: List[int] = []   # last dim first, down to the first padded one only
    for d in range(x.dim() - 1, min(full, default=x.dim()) - 1, -1):
        torch_pads += list(full.get(d, (0, 0)))
    if mode == "constant":
        return (F.pad(x, torch_pads, value=value),)
    # torch pads the last 1-3 dims of a batched input in these modes, as pairs of all of them
    torch_pads += [0] * max(0, 2 * (x.dim() - 2) - len(torch_pads))
    if len(torch_pads) > 6 or len(torch_pads) // 2 > x.dim() - 1:
        raise SparsekitError(f"Pad {node.name!r}: mode {mode} on these axes is not supported by fine-tuning")
    return (F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate"}[mode]),)


def _resize(node, opset, inp):
    x = inp[0]
    mode = get_attr(node, "mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = get_attr(node, "coordinate_transformation_mode", "half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    sizes = _opt(inp, 3)
    scales = _opt(inp, 2) if opset >= 11 else _opt(inp, 1)
    if scales is not None and scales.numel() and scales.tolist()[:2] != [1.0, 1.0]:
        raise SparsekitError(f"Resize {node.name!r}: only spatial axes can be scaled in fine-tuning")
    # with scales, ONNX maps coordinates by the given scale (not out/in): pass it as is
    size = dict(size=_ints(sizes)[2:]) if sizes is not None and sizes.numel() else \
        dict(scale_factor=scales.tolist()[2:], recompute_scale_factor=False)
    if mode == "nearest":
        nm = get_attr(node, "nearest_mode", "round_prefer_floor")
        nm = nm.decode() if isinstance(nm, bytes) else nm
        if ctm != "asymmetric" or nm != "floor":
            raise SparsekitError(f"Resize {node.name!r}: nearest mode needs asymmetric/floor here, "
                                 f"the model has {ctm}/{nm}")
        return (F.interpolate(x, mode="nearest", **size),)
    if mode == "linear" and ctm in ("half_pixel", "align_corners", "pytorch_half_pixel"):
        lin = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim() - 2]
        return (F.interpolate(x, mode=lin, align_corners=ctm == "align_corners", **size),)
    raise SparsekitError(f"Resize {node.name!r}: mode {mode}/{ctm} is not supported by fine-tuning")


def _constant(node, opset, inp):
    for a in node.attribute:
        if a.name == "value":
            return (torch.from_numpy(np.array(numpy_helper.to_array(a.t))),)
        if a.name in ("value_float", "value_int"):
            return (torch.tensor(onnx.helper.get_attribute_value(a)),)
        if a.name in ("value_floats", "value_ints"):
            return (torch.tensor(list(onnx.helper.get_attribute_value(a))),)
    raise SparsekitError(f"Constant {node.name!r}: no supported value attribute")


def _constant_of_shape(node, opset, inp):
    t = get_attr(node, "value", None)
    v = torch.zeros(1) if t is None else torch.from_numpy(np.array(numpy_helper.to_array(t)))
    return (v.reshape(()).expand(*_ints(inp[0])).clone(),)


def _range(node, opset, inp):
    start, limit, delta = (t.item() for t in inp)
    return (torch.arange(start, limit, delta, dtype=inp[0].dtype),)


def _expand(node, opset, inp):
    x, shape = inp[0], _ints(inp[1])
    target = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    return (x.expand(target),)


def _hardsigmoid(node, opset, inp):
    alpha, beta = float(get_attr(node, "alpha", 0.2)), float(get_attr(node, "beta", 0.5))
    return (torch.clamp(inp[0] * alpha + beta, 0.0, 1.0),)


def _gelu(node, opset, inp):
    approx = get_attr(node, "approximate", "none")
    return (F.gelu(inp[0], approximate=approx.decode() if isinstance(approx, bytes) else approx),)


def _leaky(node, opset, inp):
    return (F.leaky_relu(inp[0], float(get_attr(node, "alpha", 0.01))),)


def _elu(node, opset, inp):
    return (F.elu(inp[0], float(get_attr(node, "alpha", 1.0))),)


def _dropout(node, opset, inp):
    out = [inp[0]]
    if len(node.output) > 1:
        out.append(torch.ones_like(inp[0], dtype=torch.bool))
    return tuple(out)


def _unary(fn):
    return lambda node, opset, inp: (fn(inp[0]),)


def _binary(fn):
    return lambda node, opset, inp: (fn(inp[0], inp[1]),)


def _variadic(fn):
    def op(node, opset, inp):
        y = inp[0]
        for t in inp[1:]:
            y = fn(y, t)
        return (y,)
    return op


def _div(a, b):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


# --------------------------------------------------------------------------- LSTM / GRU

def _recurrent_setup(node, inp, gates: int):
    """Common checks; returns (X [T, N, I], W, R, B, h0, dirs, H)."""
    for attr in ("activations", "activation_alpha", "activation_beta", "clip"):
        if get_attr(node, attr, None) is not None:
            raise SparsekitError(f"{node.op_type} {node.name!r}: attribute {attr!r} is not supported "
                                 "by fine-tuning")
    if _opt(inp, 4) is not None:
        raise SparsekitError(f"{node.op_type} {node.name!r}: sequence_lens is not supported by fine-tuning")
    x, w, r = inp[0], inp[1], inp[2]
    layout = int(get_attr(node, "layout", 0))
    if layout:   # onnxruntime does not run it either: nothing to check it against
        raise SparsekitError(f"{node.op_type} {node.name!r}: layout=1 is not supported by fine-tuning")
    dirs, H = w.shape[0], w.shape[1] // gates
    b = _opt(inp, 3)
    if b is None:
        b = torch.zeros(dirs, 2 * gates * H, dtype=x.dtype, device=x.device)
    return x, w, r, b, _opt(inp, 5), dirs, H


def _directions(node, dirs):
    d = get_attr(node, "direction", "forward")
    d = d.decode() if isinstance(d, bytes) else d
    return ["forward", "reverse"] if d == "bidirectional" else [d] * dirs


def _recurrent_outputs(node, ys, hs, cs):
    out = [torch.stack(ys, dim=1), torch.stack(hs, dim=0)]     # Y [T, D, N, H], Y_h [D, N, H]
    if cs is not None:
        out.append(torch.stack(cs, dim=0))
    return tuple(out[:len(node.output)])


def _lstm(node, opset, inp):
    if get_attr(node, "input_forget", 0):
        raise SparsekitError(f"LSTM {node.name!r}: input_forget is not supported by fine-tuning")
    x, w, r, b, h0, dirs, H = _recurrent_setup(node, inp, 4)
    c0 = _opt(inp, 6)
    p = _opt(inp, 7)
    T, N = x.shape[0], x.shape[1]
    ys, hs, cs = [], [], []
    for d, direction in enumerate(_directions(node, dirs)):
        xw = x @ w[d].t() + b[d, :4 * H] + b[d, 4 * H:]          # [T, N, 4H], gates i, o, f, c
        h = h0[d] if h0 is not None else x.new_zeros(N, H)
        c = c0[d] if c0 is not None else x.new_zeros(N, H)
        pi, po, pf = (p[d, :H], p[d, H:2 * H], p[d, 2 * H:]) if p is not None else (None,) * 3
        steps = range(T - 1, -1, -1) if direction == "reverse" else range(T)
        out = [None] * T
        for t in steps:
            g = xw[t] + h @ r[d].t()
            i, o, f, cc = g.split(H, dim=-1)
            if pi is not None:
                i, f = i + pi * c, f + pf * c
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cc)
            if po is not None:
                o = o + po * c
            h = torch.sigmoid(o) * torch.tanh(c)
            out[t] = h
        ys.append(torch.stack(out, dim=0))
        hs.append(h)
        cs.append(c)
    return _recurrent_outputs(node, ys, hs, cs)


def _gru(node, opset, inp):
    x, w, r, b, h0, dirs, H = _recurrent_setup(node, inp, 3)
    before = bool(get_attr(node, "linear_before_reset", 0))
    T, N = x.shape[0], x.shape[1]
    ys, hs = [], []
    for d, direction in enumerate(_directions(node, dirs)):
        xw = x @ w[d].t() + b[d, :3 * H]                         # gates z, r, h
        rb = b[d, 3 * H:]
        rz, rr, rh = r[d].split(H, dim=0)
        h = h0[d] if h0 is not None else x.new_zeros(N, H)
        steps = range(T - 1, -1, -1) if direction == "reverse" else range(T)
        out = [None] * T
        for t in steps:
            xz, xr, xh = xw[t].split(H, dim=-1)
            z = torch.sigmoid(xz + h @ rz.t() + rb[:H])
            rt = torch.sigmoid(xr + h @ rr.t() + rb[H:2 * H])
            if before:
                hh = torch.tanh(xh + rt * (h @ rh.t() + rb[2 * H:]))
            else:
                hh = torch.tanh(xh + (rt * h) @ rh.t() + rb[2 * H:])
            h = (1 - z) * hh + z * h
            out[t] = h
        ys.append(torch.stack(out, dim=0))
        hs.append(h)
    return _recurrent_outputs(node, ys, hs, None)


OPS: Dict[str, Callable] = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(_div),
    "Pow": _binary(torch.pow), "Min": _variadic(torch.minimum), "Max": _variadic(torch.maximum),
    "Sum": _variadic(torch.add), "Equal": _binary(torch.eq), "Less": _binary(torch.lt),
    "Greater": _binary(torch.gt), "LessOrEqual": _binary(torch.le), "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or), "Not": _unary(torch.logical_not),
    "Where": lambda node, opset, inp: (torch.where(inp[0], inp[1], inp[2]),),
    "Relu": _unary(torch.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp), "Log": _unary(torch.log), "Sqrt": _unary(torch.sqrt), "Erf": _unary(torch.erf),
    "Neg": _unary(torch.neg), "Abs": _unary(torch.abs), "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil), "Softplus": _unary(F.softplus),
    "HardSwish": _unary(F.hardswish), "HardSigmoid": _hardsigmoid, "LeakyRelu": _leaky, "Elu": _elu,
    "Gelu": _gelu, "PRelu": lambda node, opset, inp: (torch.where(inp[0] >= 0, inp[0], inp[0] * inp[1]),),
    "Clip": _clip, "Identity": _unary(lambda x: x), "Dropout": _dropout,
    "BatchNormalization": _batchnorm, "LayerNormalization": _layernorm,
    "Softmax": _softmax_like(torch.softmax), "LogSoftmax": _softmax_like(torch.log_softmax),
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_pool(torch.mean), "GlobalMaxPool": _global_pool(torch.amax),
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze, "Concat": _concat, "Split": _split, "Slice": _slice, "Gather": _gather,
    "Shape": _shape, "Cast": _cast, "Pad": _pad, "Resize": _resize, "Expand": _expand,
    "Constant": _constant, "ConstantOfShape": _constant_of_shape, "Range": _range,
    "ReduceMean": _reduce(lambda x, d, k: x.mean(dim=d, keepdim=k)),
    "ReduceSum": _reduce(lambda x, d, k: x.sum(dim=d, keepdim=k)),
    "ReduceMax": _reduce(_reduce_max),
    "LSTM": _lstm, "GRU": _gru,
}


def _opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ONNX_DOMAINS), 1)


class OnnxModule(torch.nn.Module):
    """Evaluates an ONNX graph with torch; ``trainable`` initializers are parameters.

    ``forward(feeds)`` takes the graph inputs by name (torch tensors) and returns the graph
    outputs, plus any ``extra`` tensor names asked for, by name.
    """

    def __init__(self, model: onnx.ModelProto, trainable: Iterable[str] = ()):
        super().__init__()
        g = model.graph
        self.opset = _opset(model)
        unsupported = sorted({n.op_type if n.domain in ONNX_DOMAINS else f"{n.domain}.{n.op_type}"
                              for n in g.node if n.domain not in ONNX_DOMAINS or n.op_type not in OPS})
        if unsupported:
            raise SparsekitError(f"fine-tuning cannot run op(s) {', '.join(unsupported)} "
                                 "(it takes plain ONNX models, before convert)")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in g.node for a in n.attribute):
            raise SparsekitError("fine-tuning does not run control flow (If/Loop/Scan) subgraphs")
        trainable = set(trainable)
        self.param_names: List[str] = []
        self.weights = torch.nn.ParameterList()
        self.constants: Dict[str, torch.Tensor] = {}
        self._index: Dict[str, int] = {}
        for t in g.initializer:
            arr = np.array(numpy_helper.to_array(t))
            value = torch.from_numpy(arr.copy())
            if t.name in trainable:
                self._index[t.name] = len(self.param_names)
                self.param_names.append(t.name)
                self.weights.append(torch.nn.Parameter(value))
            else:
                self.constants[t.name] = value
        self.nodes = list(g.node)
        self.inputs = [v.name for v in g.input if v.name not in self._index and v.name not in self.constants]
        self.outputs = [v.name for v in g.output]
        self._last_use: Dict[str, int] = {}
        for k, n in enumerate(self.nodes):
            for x in n.input:
                self._last_use[x] = k

    def channels_last(self) -> "OnnxModule":
        """Store 4-D parameters channels-last (NHWC in memory, same logical shape): oneDNN's
        convolutions, forward and backward, run ~1.6x faster that way on CPU (MobileNetV2,
        batch 16, measured here); feed 4-D inputs the same way."""
        for p in self.weights:
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
        return self

    def parameter(self, name: str) -> torch.nn.Parameter:
        return self.weights[self._index[name]]

    def named_weights(self) -> Dict[str, torch.nn.Parameter]:
        return {n: self.weights[i] for n, i in self._index.items()}

    def _apply(self, fn, *args, **kwargs):
        # keep the plain-dict constants on the parameters' device (module.to(device))
        out = super()._apply(fn, *args, **kwargs)
        self.constants = {k: fn(v) for k, v in self.constants.items()}
        return out

    def forward(self, feeds: Dict[str, torch.Tensor], extra: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
        env: Dict[str, torch.Tensor] = dict(self.constants)
        env.update(self.named_weights())
        env.update(feeds)
        keep = set(self.outputs) | set(extra)
        for k, n in enumerate(self.nodes):
            try:
                args = [env[x] if x else None for x in n.input]
            except KeyError as e:
                raise SparsekitError(f"node {n.name or n.op_type!r}: input {e.args[0]!r} is not produced "
                                     "by the graph") from None
            outs = OPS[n.op_type](n, self.opset, args)
            for name, value in zip(n.output, outs):
                if name:
                    env[name] = value
            for x in n.input:    # drop values no later node reads (autograd keeps what it needs)
                if x and self._last_use.get(x) == k and x not in keep and x not in feeds:
                    env.pop(x, None)
        missing = [x for x in keep if x not in env]
        if missing:
            raise SparsekitError(f"tensor {missing[0]!r} is not computed by the graph")
        return {x: env[x] for x in list(self.outputs) + [e for e in extra if e not in self.outputs]}
