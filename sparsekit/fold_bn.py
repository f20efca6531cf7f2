"""BatchNormalization folding: an inference-mode BN after a Conv becomes the Conv's weights and
bias (docs/prune.md, "BatchNormalization folding").  prune folds before choosing masks, so that
magnitudes are those of the folded weights; convert and analyze fold the same way.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import (ONNX_DOMAINS, all_names, consumer_map, drop_unused_initializers, get_attr,
                    initializer_map, node_names, set_initializer, tensor_to_array, unique_name)

__all__ = ["fold_batchnorms"]


def fold_batchnorms(model: onnx.ModelProto, names: Optional[List[str]] = None
                    ) -> Tuple[List[Dict[str, str]], List[str]]:
    """Fold every inference-mode BatchNormalization that is a Conv's only consumer, in place.

    ``W' = W · s`` and ``b' = (b - mean) · s + B`` per output channel with
    ``s = scale / sqrt(var + epsilon)``; the BN node is removed and the Conv now writes the BN's
    output tensor (so graph outputs and downstream names are unchanged).  Returns the folded
    ``{"conv", "bn"}`` pairs (display names) and notes on pairs that were not folded.
    """
    g = model.graph
    names = names or node_names(g)
    inits = initializer_map(g)
    cons = consumer_map(g)
    graph_outputs = {o.name for o in g.output}
    taken = all_names(g)
    remove: set = set()
    bn_params: set = set()
    folded: List[Dict[str, str]] = []
    notes: List[str] = []
    for i, n in enumerate(g.node):
        if n.op_type != "Conv" or n.domain not in ONNX_DOMAINS or len(n.input) < 2:
            continue
        y = n.output[0] if n.output else ""
        users = cons.get(y, [])
        if not y or y in graph_outputs or len(users) != 1:
            continue
        j, bn = users[0]
        if bn.op_type != "BatchNormalization" or bn.domain not in ONNX_DOMAINS:
            continue
        why = _fold_obstacle(n, bn, y, inits, cons, i)
        if why:
            notes.append(f"BatchNormalization {names[j]} not folded into {names[i]}: {why}")
            continue
        w_t = inits[n.input[1]]
        W = tensor_to_array(w_t).astype(np.float64)
        scale, beta, mean, var = (tensor_to_array(inits[x]).astype(np.float64)
                                  for x in bn.input[1:5])
        eps = float(get_attr(bn, "epsilon", 1e-5))
        M = W.shape[0]
        if any(v.shape != (M,) for v in (scale, beta, mean, var)):
            notes.append(f"BatchNormalization {names[j]} not folded into {names[i]}: "
                         f"parameter shapes do not match {M} output channels")
            continue
        s = scale / np.sqrt(var + eps)
        has_bias = len(n.input) > 2 and n.input[2] != ""
        b = tensor_to_array(inits[n.input[2]]).astype(np.float64) if has_bias else np.zeros(M)
        if b.shape != (M,):
            notes.append(f"BatchNormalization {names[j]} not folded into {names[i]}: "
                         f"bias shape {list(b.shape)} is not [{M}]")
            continue
        W_new = (W * s.reshape((M,) + (1,) * (W.ndim - 1))).astype(np.float32)
        b_new = ((b - mean) * s + beta).astype(np.float32)
        set_initializer(w_t, W_new)
        if has_bias:
            set_initializer(inits[n.input[2]], b_new)
        else:
            bname = unique_name(f"{n.input[1]}.folded_bias", taken)
            g.initializer.append(numpy_helper.from_array(b_new, bname))
            inits[bname] = g.initializer[-1]
            if len(n.input) == 2:
                n.input.append(bname)
            else:
                n.input[2] = bname
        n.output[0] = bn.output[0]
        for vi in list(g.value_info):
            if vi.name == y:
                g.value_info.remove(vi)
        remove.add(j)
        bn_params.update(bn.input[1:5])
        folded.append({"conv": names[i], "bn": names[j]})
    if remove:
        kept = [nd for k, nd in enumerate(g.node) if k not in remove]
        del g.node[:]
        g.node.extend(kept)
        drop_unused_initializers(g, bn_params)
    return folded, notes


def _fold_obstacle(conv, bn, y, inits, cons, conv_index) -> Optional[str]:
    if list(bn.input).count(y) != 1 or bn.input[0] != y:
        return "the Conv output is not only BN's data input"
    if int(get_attr(bn, "training_mode", 0)):
        return "training_mode=1"
    if int(get_attr(bn, "spatial", 1)) != 1:
        return "spatial=0"
    if not bn.output or not bn.output[0] or any(o for o in bn.output[1:]):
        return "BN produces running statistics (training outputs)"
    if len(bn.input) < 5 or any(x not in inits for x in bn.input[1:5]):
        return "scale/B/mean/var are not constant initializers"
    w = conv.input[1]
    if w not in inits:
        return "the Conv weight is not a constant initializer"
    tensors = [inits[w]] + [inits[x] for x in bn.input[1:5]]
    if len(conv.input) > 2 and conv.input[2]:
        if conv.input[2] not in inits:
            return "the Conv bias is not a constant initializer"
        tensors.append(inits[conv.input[2]])
        if len(cons.get(conv.input[2], [])) > 1:
            return "the Conv bias is shared with other nodes"
    if any(t.data_type != onnx.TensorProto.FLOAT for t in tensors):
        return "only float32 weights are folded"
    if len(cons.get(w, [])) > 1:
        return "the Conv weight is shared with other nodes"
    return None

