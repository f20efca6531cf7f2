"""autotune: time dense vs sparse for one layer in onnxruntime (same threads, interleaved runs,
medians) and keep the faster."""
from __future__ import annotations

import copy
from typing import Dict, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import format
from ..errors import SparsekitError
from ..fuse import GraphIndex
from ..sessions import time_pair
from .plan import Context, Plan
from .report import LayerDecision

__all__ = ["AutoTuner", "check_autotune_dims", "decide", "to_dense", "single_layer_model"]


def check_autotune_dims(dims) -> Dict[str, int]:
    out = {}
    for k, v in (dims or {}).items():
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise SparsekitError(f"autotune_dims[{k!r}] = {v!r} is not an integer") from None
        if n < 1:
            raise SparsekitError(f"autotune_dims[{k!r}] = {n} must be >= 1")
        out[str(k)] = n
    return out


def decide(tuner: "AutoTuner", ctx: Context, row: LayerDecision, plan: Plan):
    try:
        row.dense_ms, row.sparse_ms = tuner.time(ctx.model, plan, ctx.shapes)
    except Exception as e:  # a layer we cannot time keeps the threshold decision
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        row.note = f"autotune could not time this layer ({msg[:200]}); threshold rule used"
        limit = ctx.thresholds[plan.choice.key]
        if plan.choice.density > limit:
            return to_dense(row, f"density {plan.choice.density:.2f} > {limit:.2f}"), None
        return row, plan
    if row.sparse_ms >= row.dense_ms:
        return to_dense(row, f"autotune: sparse ({row.format}) {row.sparse_ms:.3f} ms >= "
                              f"dense {row.dense_ms:.3f} ms"), None
    row.reason = (f"autotune: sparse ({row.format}) {row.sparse_ms:.3f} ms < "
                  f"dense {row.dense_ms:.3f} ms")
    return row, plan


def to_dense(row: LayerDecision, reason: str) -> LayerDecision:
    row.decision, row.reason, row.format, row.fused, row.sparse_bytes = \
        "dense", reason, None, "", None
    return row


class AutoTuner:
    def __init__(self, threads: Optional[int], index: GraphIndex, dims: Dict[str, int]):
        self.threads = threads
        self.index = index
        self.dims = dims

    def feeds(self, plan: Plan, shapes) -> dict:
        rng = np.random.default_rng(0)
        feeds = {}
        names = [plan.layer.node.input[0]] + ([plan.fusion.residual] if plan.fusion.residual
                                              else [])
        for name in names:
            dims = shapes.get(name)
            if not dims:
                raise SparsekitError(f"the shape of {name!r} is unknown")
            concrete = []
            for d in dims:
                if isinstance(d, int) and d > 0:
                    concrete.append(d)
                elif isinstance(d, str) and d:
                    concrete.append(self.dims.get(d, 1))
                else:
                    raise SparsekitError(f"the shape of {name!r} has an unknown dim")
            feeds[name] = rng.standard_normal(concrete).astype(np.float32)
        return feeds

    def time(self, model, plan: Plan, shapes) -> tuple:
        """(dense ms, sparse ms): the layer with its epilogue, and its replacement, alone."""
        feeds = self.feeds(plan, shapes)
        out = plan.fusion.output
        dense = single_layer_model(model, self.index, plan.absorbed, feeds, out)
        sparse = single_layer_model(model, self.index, [plan.node], feeds, out,
                                    extra_inits=plan.inits)
        # the same session settings and thread pinning `bench` uses, so both measure alike
        return time_pair(dense, sparse, feeds, self.threads)


def single_layer_model(model, index: GraphIndex, nodes, feeds, out, extra_inits=()):
    """The given nodes alone, their constants (initializers or Constant nodes) as initializers."""
    extra = {t.name for t in extra_inits}
    inner = {o for n in nodes for o in n.output}
    needed = {i for n in nodes for i in n.input
              if i and i not in feeds and i not in extra and i not in inner}
    consts = []
    for name in sorted(needed):
        v = index.constant(name)
        if v is None:
            raise SparsekitError(f"{name!r} is neither an input nor a constant")
        consts.append(numpy_helper.from_array(np.asarray(v), name))
    graph = helper.make_graph(
        [copy.deepcopy(n) for n in nodes], "layer",
        [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, list(v.shape))
         for k, v in feeds.items()],
        [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)],
        consts + list(extra_inits))
    opsets = [o for o in model.opset_import if o.domain != format.DOMAIN] + [format.opset_import()]
    return helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
