"""Reference architectures (the zoo), built in plain onnx."""
from __future__ import annotations

import inspect
from typing import Callable, Dict, List

import onnx

from sparsekit.errors import SparsekitError

from . import bert_layer, efficientnet_lite0, lstm_lm, mobilenet_v1, mobilenet_v2, resnet50

# name -> builder; every builder takes keyword parameters with defaults (the full-size model)
# plus ``seed`` and returns an onnx.ModelProto (opset 17, IR 8, batch 1, static shapes).
ZOO: Dict[str, Callable[..., onnx.ModelProto]] = {
    "mobilenet_v1": mobilenet_v1.build,
    "mobilenet_v2": mobilenet_v2.build,
    "efficientnet_lite0": efficientnet_lite0.build,
    "resnet50": resnet50.build,
    "bert_layer": bert_layer.build,
    "lstm_lm": lstm_lm.build,
}

_DESCRIPTIONS: Dict[str, str] = {
    "mobilenet_v1": mobilenet_v1.DESCRIPTION,
    "mobilenet_v2": mobilenet_v2.DESCRIPTION,
    "efficientnet_lite0": efficientnet_lite0.DESCRIPTION,
    "resnet50": resnet50.DESCRIPTION,
    "bert_layer": bert_layer.DESCRIPTION,
    "lstm_lm": lstm_lm.DESCRIPTION,
}


def names() -> List[str]:
    """The zoo's model names, in registry order."""
    return list(ZOO)


def _builder(name: str) -> Callable[..., onnx.ModelProto]:
    try:
        return ZOO[name]
    except (KeyError, TypeError):
        raise SparsekitError(f"unknown zoo model {name!r}; choose from {', '.join(ZOO)}") from None


def params(name: str) -> Dict[str, object]:
    """The builder's keyword parameters and their defaults."""
    sig = inspect.signature(_builder(name))
    return {k: p.default for k, p in sig.parameters.items()}


def describe(name: str) -> str:
    """One paragraph on the architecture, followed by its parameters and defaults."""
    _builder(name)
    args = ", ".join(f"{k}={v!r}" for k, v in params(name).items())
    return f"{_DESCRIPTIONS[name]} Parameters: {args}."


def build(name: str, **kwargs) -> onnx.ModelProto:
    """Build zoo model ``name``; ``kwargs`` are that builder's parameters (see ``describe``)."""
    builder = _builder(name)
    known = params(name)
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        raise SparsekitError(
            f"zoo model {name!r} has no parameter {unknown[0]!r}; parameters: {', '.join(known)}"
        )
    return builder(**kwargs)


__all__ = ["ZOO", "build", "describe", "names", "params"]
