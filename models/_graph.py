"""A small ONNX graph builder shared by the zoo models.

It keeps the bookkeeping out of the model files: unique node, value and initializer names in the
style of a PyTorch export (node ``layer1.0.conv1``, weight ``layer1.0.conv1.weight``, value
``layer1.0.conv1_output``), deterministic random weights from one ``numpy.random.Generator``, and
a few composite layers (Conv [+ BatchNormalization], Relu, Clip, Gemm, ...) written out as the
plain ONNX ops an exporter emits.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # onnxruntime >= 1.17 loads IR 8 and 9; 8 is the widest-compatible choice
PRODUCER = "sparsekit.models"

Shape = Sequence[Union[int, str]]


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round a scaled channel count to a multiple of ``divisor`` (never dropping below 90%)."""
    if min_value is None:
        min_value = divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return int(new)


class GraphBuilder:
    """Accumulates inputs, initializers, nodes and outputs, then emits a ``ModelProto``."""

    def __init__(self, graph_name: str, seed: int = 0):
        self.graph_name = graph_name
        self.rng = np.random.default_rng(seed)
        self.inputs: List[onnx.ValueInfoProto] = []
        self.outputs: List[onnx.ValueInfoProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.nodes: List[onnx.NodeProto] = []
        self._values: set = set()  # every value name: graph inputs, initializers, node outputs
        self._node_names: set = set()
        self._constants: Dict[Tuple, str] = {}
        self.num_params = 0

    # ------------------------------------------------------------------ names
    @staticmethod
    def _unique(name: str, taken: set) -> str:
        if name not in taken:
            taken.add(name)
            return name
        i = 1
        while f"{name}_{i}" in taken:
            i += 1
        taken.add(f"{name}_{i}")
        return f"{name}_{i}"

    # ------------------------------------------------------------------ graph io
    def add_input(self, name: str, shape: Shape, elem_type: int = TensorProto.FLOAT) -> str:
        if name in self._values:
            raise ValueError(f"graph input name {name!r} already used")
        self._values.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def add_output(self, value: str, shape: Shape, elem_type: int = TensorProto.FLOAT) -> str:
        if value not in self._values:
            raise ValueError(f"graph output {value!r} is not a value of the graph")
        self.outputs.append(helper.make_tensor_value_info(value, elem_type, list(shape)))
        return value

    # ------------------------------------------------------------------ tensors
    def initializer(self, name: str, array: np.ndarray, count_params: bool = True) -> str:
        """Add a weight initializer under a unique name; returns the name used."""
        name = self._unique(name, self._values)
        array = np.asarray(array)
        if not array.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
            array = array.copy(order="C")
        self.initializers.append(numpy_helper.from_array(array, name))
        if count_params:
            self.num_params += int(array.size)
        return name

    def constant(self, value, dtype=np.float32, name: Optional[str] = None) -> str:
        """A small constant initializer (shape, axis, scalar); identical constants are shared."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key in self._constants:
            return self._constants[key]
        if name is None:
            name = f"const_{len(self._constants)}"
        name = self.initializer(name, array, count_params=False)
        self._constants[key] = name
        return name

    def normal(self, shape: Sequence[int], std: float, mean: float = 0.0) -> np.ndarray:
        out = self.rng.standard_normal(tuple(shape), dtype=np.float32)
        out *= np.float32(std)
        if mean:
            out += np.float32(mean)
        return out

    def uniform(self, shape: Sequence[int], low: float, high: float) -> np.ndarray:
        out = self.rng.random(tuple(shape), dtype=np.float32)
        out *= np.float32(high - low)
        out += np.float32(low)
        return out

    # ------------------------------------------------------------------ nodes
    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        name: str,
        num_outputs: int = 1,
        outputs: Optional[Sequence[str]] = None,
        **attrs,
    ) -> Union[str, List[str]]:
        """Append a node named ``name`` (made unique); returns its output name(s).

        Output values are named ``<node>_output`` (``<node>_output_<i>`` for several) unless
        ``outputs`` names them; an empty string in ``outputs`` leaves that optional output unused.
        """
        for x in inputs:
            if x and x not in self._values:
                raise ValueError(f"node {name!r}: input {x!r} is not defined yet")
        name = self._unique(name, self._node_names)
        if outputs is None:
            if num_outputs == 1:
                outputs = [f"{name}_output"]
            else:
                outputs = [f"{name}_output_{i}" for i in range(num_outputs)]
        used = []
        for o in outputs:
            used.append(self._unique(o, self._values) if o else "")
        self.nodes.append(helper.make_node(op_type, list(inputs), used, name=name, **attrs))
        return used[0] if len(used) == 1 else used

    # ------------------------------------------------------------------ layers
    def conv(
        self,
        x: str,
        name: str,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        group: int = 1,
        bias: bool = True,
        gain: float = 1.0,
        relu_init: bool = True,
    ) -> str:
        """Conv with PyTorch-style symmetric padding ``kernel // 2``.

        Weights are He-normal (std ``gain * sqrt(2 / fan_in)``; ``relu_init=False`` drops the 2 for
        layers not followed by a ReLU); the bias follows PyTorch's default U(+-1/sqrt(fan_in)),
        scaled down so deep stacks keep their activations centred.
        """
        if cin % group or cout % group:
            raise ValueError(f"{name}: channels {cin}->{cout} not divisible by group {group}")
        fan_in = (cin // group) * kernel * kernel
        std = gain * math.sqrt((2.0 if relu_init else 1.0) / fan_in)
        w = self.initializer(f"{name}.weight", self.normal((cout, cin // group, kernel, kernel), std))
        ins = [x, w]
        if bias:
            bound = 0.1 / math.sqrt(fan_in)
            ins.append(self.initializer(f"{name}.bias", self.uniform((cout,), -bound, bound)))
        pad = kernel // 2
        return self.node(
            "Conv",
            ins,
            name,
            dilations=[1, 1],
            group=group,
            kernel_shape=[kernel, kernel],
            pads=[pad, pad, pad, pad],
            strides=[stride, stride],
        )

    def batchnorm(self, x: str, name: str, channels: int, gamma: Tuple[float, float] = (0.8, 1.2)) -> str:
        """Inference BatchNormalization with random but sane statistics (variance > 0)."""
        scale = self.initializer(f"{name}.weight", self.uniform((channels,), *gamma))
        shift = self.initializer(f"{name}.bias", self.uniform((channels,), -0.05, 0.05))
        mean = self.initializer(f"{name}.running_mean", self.uniform((channels,), -0.05, 0.05))
        var = self.initializer(f"{name}.running_var", self.uniform((channels,), 0.8, 1.25))
        return self.node(
            "BatchNormalization", [x, scale, shift, mean, var], name, epsilon=1e-5, momentum=0.9
        )

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", [x], name)

    def clip(self, x: str, name: str, low: float = 0.0, high: float = 6.0) -> str:
        """ReLU6 as an exporter writes it: Clip with min/max as constant initializer inputs."""
        lo = self.constant(low, name="clip_min" if low == 0.0 else None)
        hi = self.constant(high, name="clip_max" if high == 6.0 else None)
        return self.node("Clip", [x, lo, hi], name)

    def add(self, a: str, b: str, name: str) -> str:
        return self.node("Add", [a, b], name)

    def maxpool(self, x: str, name: str, kernel: int = 3, stride: int = 2, pad: int = 1) -> str:
        return self.node(
            "MaxPool",
            [x],
            name,
            ceil_mode=0,
            dilations=[1, 1],
            kernel_shape=[kernel, kernel],
            pads=[pad, pad, pad, pad],
            strides=[stride, stride],
        )

    def global_avg_pool(self, x: str, name: str = "avgpool") -> str:
        return self.node("GlobalAveragePool", [x], name)

    def flatten(self, x: str, name: str = "flatten") -> str:
        return self.node("Flatten", [x], name, axis=1)

    def gemm(self, x: str, name: str, fin: int, fout: int, output: Optional[str] = None) -> str:
        """nn.Linear as exported: Gemm(x, W[fout, fin], b) with transB=1, PyTorch default init."""
        bound = 1.0 / math.sqrt(fin)
        w = self.initializer(f"{name}.weight", self.uniform((fout, fin), -bound, bound))
        b = self.initializer(f"{name}.bias", self.uniform((fout,), -bound, bound))
        return self.node(
            "Gemm",
            [x, w, b],
            name,
            outputs=[output] if output else None,
            alpha=1.0,
            beta=1.0,
            transB=1,
        )

    def classifier_head(self, x: str, channels: int, num_classes: int, fc_name: str) -> str:
        """GlobalAveragePool -> Flatten -> Gemm, the usual tail; output value is ``logits``."""
        y = self.global_avg_pool(x)
        y = self.flatten(y)
        y = self.gemm(y, fc_name, channels, num_classes, output="logits")
        self.add_output(y, [1, num_classes])
        return y

    # ------------------------------------------------------------------ model
    def build(self, doc_string: str = "", metadata: Optional[Dict[str, str]] = None) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.graph_name, self.inputs, self.outputs, initializer=self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            producer_version="1",
            doc_string=doc_string,
        )
        model.ir_version = IR_VERSION
        if metadata:
            helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
        return model


# ---------------------------------------------------------------------- shared by the builders
def check_positive(**params) -> None:
    """Raise SparsekitError unless every given parameter is a positive number."""
    from sparsekit.errors import SparsekitError

    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise SparsekitError(f"{key} must be a positive number, got {value!r}")


def check_int(**params) -> None:
    """Raise SparsekitError unless every given parameter is a positive integer."""
    from sparsekit.errors import SparsekitError

    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SparsekitError(f"{key} must be a positive integer, got {value!r}")


def check_bool(**params) -> None:
    """Raise SparsekitError unless every given parameter is a bool."""
    from sparsekit.errors import SparsekitError

    for key, value in params.items():
        if not isinstance(value, bool):
            raise SparsekitError(f"{key} must be true or false, got {value!r}")


def check_seed(seed) -> None:
    from sparsekit.errors import SparsekitError

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SparsekitError(f"seed must be a non-negative integer, got {seed!r}")


def check_resolution(resolution, multiple: int) -> None:
    """Input side must be an integer and at least ``multiple`` (the network's total stride)."""
    from sparsekit.errors import SparsekitError

    check_int(resolution=resolution)
    if resolution < multiple:
        raise SparsekitError(f"resolution must be at least {multiple}, got {resolution}")


def finish(g: GraphBuilder, model_name: str, description: str, **params) -> onnx.ModelProto:
    """Emit the model with zoo metadata, then annotate intermediate shapes (value_info).

    Shape inference runs in strict mode and the inferred graph-output shapes are compared with
    the declared ones, so a builder mistake fails here rather than in a user's session.
    """
    meta = {"sparsekit.zoo.model": model_name, "sparsekit.zoo.params": _format_params(params)}
    meta["sparsekit.zoo.num_params"] = str(g.num_params)
    model = g.build(doc_string=description, metadata=meta)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    shapes = {vi.name: vi for vi in inferred.graph.value_info}
    for out in model.graph.output:
        got = shapes.get(out.name)
        if got is not None and _dims(got) != _dims(out):
            raise AssertionError(f"{model_name}: output {out.name} inferred as {_dims(got)}, "
                                 f"declared {_dims(out)}")
    declared = {vi.name for vi in model.graph.output}
    model.graph.value_info.extend(vi for vi in inferred.graph.value_info if vi.name not in declared)
    return model


def _dims(vi: onnx.ValueInfoProto):
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]


def _format_params(params: Dict) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())
