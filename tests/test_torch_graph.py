"""sparsekit.torch_graph: ONNX graphs run by torch give stock onnxruntime's outputs, op by op and
on every zoo model, and their initializers are the parameters (same names, same layout)."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from sparsekit import models  # noqa: E402
from sparsekit.errors import SparsekitError  # noqa: E402
from sparsekit.torch_graph import OnnxModule, trainable_initializers  # noqa: E402

import onnxruntime as ort  # noqa: E402

RNG = np.random.default_rng(0)
DATA = Path(__file__).resolve().parent / "data"


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _stock(model, feeds):
    """All outputs from stock onnxruntime: the independent reference."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _check(model, feeds, atol=1e-5):
    ref = _stock(model, feeds)
    mod = OnnxModule(model, trainable_initializers(model))
    with torch.no_grad():
        got = mod({k: torch.from_numpy(v) for k, v in feeds.items()})
    assert list(got) == [o.name for o in model.graph.output]
    for r, g in zip(ref, got.values()):
        g = g.numpy()
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=atol)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


CONV_CASES = [
    dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], pads=[0, 1, 2, 0], strides=[2, 2]),
    dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(kernel_shape=[3, 3], auto_pad="SAME_LOWER", strides=[2, 1]),
    dict(kernel_shape=[3, 3], auto_pad="VALID", dilations=[2, 2]),
    dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2], group=4),
    dict(kernel_shape=[1, 1]),
]


@pytest.mark.parametrize("attrs", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv(attrs, bias):
    g = attrs.get("group", 1)
    kh, kw = attrs["kernel_shape"]
    inits = [_init("w", _x(8, 8 // g, kh, kw))] + ([_init("b", _x(8))] if bias else [])
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], **attrs)
    _check(_model([node], [_vi("x", [2, 8, 11, 10])], [_vi("y", None)], inits), {"x": _x(2, 8, 11, 10)})


def test_conv1d():
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 2], strides=[2])
    _check(_model([node], [_vi("x", [2, 4, 13])], [_vi("y", None)], [_init("w", _x(6, 4, 3))]),
           {"x": _x(2, 4, 13)})


@pytest.mark.parametrize("ta,tb,alpha,beta", [(0, 0, 1.0, 1.0), (0, 1, 0.5, 2.0), (1, 1, 1.0, 0.0),
                                              (1, 0, 2.0, 1.0)])
def test_gemm(ta, tb, alpha, beta):
    a = _x(5, 3) if ta else _x(3, 5)
    b = _x(4, 5) if tb else _x(5, 4)
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=ta, transB=tb, alpha=alpha, beta=beta)
    _check(_model([node], [_vi("a", list(a.shape))], [_vi("y", None)], [_init("b", b), _init("c", _x(4))]),
           {"a": a})


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", dict(kernel_shape=[3, 3], pads=[0, 0, 1, 2])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[2, 3], pads=[0, 1, 1, 0])),
    ("GlobalAveragePool", {}), ("GlobalMaxPool", {}),
])
def test_pools(op, attrs):
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    _check(_model([node], [_vi("x", [2, 3, 9, 8])], [_vi("y", None)]), {"x": _x(2, 3, 9, 8)})


@pytest.mark.parametrize("op,attrs,extra", [
    ("Relu", {}, []), ("Sigmoid", {}, []), ("Tanh", {}, []), ("Erf", {}, []), ("HardSwish", {}, []),
    ("HardSigmoid", dict(alpha=0.3, beta=0.4), []), ("LeakyRelu", dict(alpha=0.1), []),
    ("Elu", dict(alpha=0.7), []), ("Softplus", {}, []), ("Abs", {}, []), ("Neg", {}, []),
    ("Softmax", dict(axis=1), []), ("LogSoftmax", dict(axis=-1), []), ("Flatten", dict(axis=2), []),
    ("Transpose", dict(perm=[0, 2, 3, 1]), []), ("Identity", {}, []),
    ("Clip", {}, [np.float32(0.0), np.float32(6.0)]), ("Clip", {}, [np.float32(-0.5)]),
    ("ReduceMean", dict(keepdims=0, axes=[1, 3]), []),
    ("ReduceSum", dict(keepdims=1), [np.array([2], np.int64)]),
    ("ReduceMax", dict(keepdims=1, axes=[-1]), []),
    ("Squeeze", {}, [np.array([0], np.int64)]),
    ("Unsqueeze", {}, [np.array([0, 5], np.int64)]),
    ("Reshape", {}, [np.array([0, -1, 6], np.int64)]),
    ("Slice", {}, [np.array([1, -4], np.int64), np.array([3, 100], np.int64), np.array([1, 3], np.int64)]),
    ("Slice", {}, [np.array([-1], np.int64), np.array([-100], np.int64), np.array([2], np.int64),
                   np.array([-2], np.int64)]),
    ("Pad", dict(mode="constant"), [np.array([0, 0, 1, 2, 0, 0, 3, 0], np.int64), np.float32(0.5)]),
    ("Pad", dict(mode="reflect"), [np.array([0, 0, 1, 2, 0, 0, 1, 0], np.int64)]),
    ("Pad", dict(mode="edge"), [np.array([0, 0, 0, 2, 0, 0, 0, 1], np.int64)]),
    ("Expand", {}, [np.array([3, 1, 1, 1], np.int64)]),
    ("Gather", dict(axis=2), [np.array([[0, -1], [2, 2]], np.int64)]),
    ("Resize", dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
     [np.array([1, 1, 2, 2], np.float32)]),
    ("Resize", dict(mode="linear", coordinate_transformation_mode="half_pixel"),
     [np.array([1, 1, 1.5, 2], np.float32)]),
])
def test_elementwise_and_shape_ops(op, attrs, extra):
    x = _x(1, 3, 5, 6) if op not in ("Squeeze",) else _x(1, 3, 5, 6)
    names = ["x"] + [f"c{i}" for i in range(len(extra))]
    if op == "Resize":
        names.insert(1, "")   # roi absent, then the scales
    inits = [_init(f"c{i}", v) for i, v in enumerate(extra)]
    node = helper.make_node(op, names, ["y"], **attrs)
    _check(_model([node], [_vi("x", list(x.shape))], [_vi("y", None)], inits), {"x": x})


def test_binary_broadcast_and_shape_chain():
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             helper.make_node("Concat", ["n1", "m1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Mul", ["r", "scale"], ["a"]),
             helper.make_node("Div", ["a", "two"], ["b"]),
             helper.make_node("Sub", ["b", "x2"], ["c"]),
             helper.make_node("Pow", ["c", "two"], ["d"]),
             helper.make_node("Sqrt", ["d"], ["e"]),
             helper.make_node("Split", ["e", "sp"], ["f", "g"], axis=1),
             helper.make_node("Max", ["f", "g"], ["y"])]
    inits = [_init("i", np.array(0, np.int64)), _init("ax", np.array([0], np.int64)),
             _init("m1", np.array([-1], np.int64)), _init("scale", _x(60)), _init("two", np.float32(2.0)),
             _init("sp", np.array([30, 30], np.int64))]
    m = _model(nodes, [_vi("x", [2, 3, 4, 5]), _vi("x2", [60])], [_vi("y", None)], inits)
    _check(m, {"x": _x(2, 3, 4, 5), "x2": _x(60)})


def test_layernorm_batchnorm_matmul():
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["bn"], epsilon=1e-3),
             helper.make_node("Flatten", ["bn"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["mm"]),
             helper.make_node("LayerNormalization", ["mm", "g", "beta"], ["y"], axis=-1, epsilon=1e-5)]
    inits = [_init("s", _x(4)), _init("b", _x(4)), _init("m", _x(4)), _init("v", np.abs(_x(4)) + 0.5),
             _init("w", _x(4 * 3 * 3, 7)), _init("g", _x(7)), _init("beta", _x(7))]
    _check(_model(nodes, [_vi("x", [2, 4, 3, 3])], [_vi("y", None)], inits), {"x": _x(2, 4, 3, 3)})


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrent(op, direction):
    layout = 0   # onnxruntime implements layout 0 only, and so does fine-tuning
    gates = 4 if op == "LSTM" else 3
    D, H, I, T, N = (2 if direction == "bidirectional" else 1), 5, 3, 4, 2
    inputs = ["x", "W", "R", "B", "", "h0"] + (["c0", "P"] if op == "LSTM" else [])
    inits = [_init("W", _x(D, gates * H, I)), _init("R", _x(D, gates * H, H)), _init("B", _x(D, 2 * gates * H))]
    state_shape = [N, D, H] if layout else [D, N, H]
    inits.append(_init("h0", _x(*state_shape)))
    if op == "LSTM":
        inits += [_init("c0", _x(*state_shape)), _init("P", _x(D, 3 * H))]
    attrs = dict(hidden_size=H, direction=direction, layout=layout)
    if op == "GRU":
        attrs["linear_before_reset"] = 1 if direction == "reverse" else 0
    outs = ["Y", "Yh"] + (["Yc"] if op == "LSTM" else [])
    node = helper.make_node(op, inputs, outs, **attrs)
    xshape = [N, T, I] if layout else [T, N, I]
    m = _model([node], [_vi("x", xshape)], [_vi(o, None) for o in outs], inits)
    _check(m, {"x": _x(*xshape)})


def test_constant_nodes_and_cast():
    c = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(_x(3), "c"))
    nodes = [c, helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
             helper.make_node("Cast", ["xi"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["xf", "c"], ["y"])]
    _check(_model(nodes, [_vi("x", [2, 3])], [_vi("y", None)]), {"x": _x(2, 3) * 4})


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "resnet50", "bert_layer", "lstm_lm"])
def test_zoo_models(name):
    m = models.build(name)
    feeds = {}
    for vi in m.graph.input:
        shape = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.elem_type == TensorProto.INT64:
            feeds[vi.name] = RNG.integers(0, 100, shape).astype(np.int64)
        else:
            feeds[vi.name] = _x(*shape)
    _check(m, feeds, atol=2e-5)


def test_digits_cnn_and_parameters_are_initializers():
    m = onnx.load(DATA / "digits_cnn.onnx")
    _check(m, {"input": _x(4, 1, 8, 8)})
    trainable = trainable_initializers(m)
    mod = OnnxModule(m, trainable)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    # every Conv/Gemm weight is a weight slot, the biases are trained but not masked
    assert {n for n, w in trainable.items() if w} == {n for n in inits if n.endswith("weight")}
    for name, p in mod.named_weights().items():
        np.testing.assert_array_equal(p.detach().numpy(), inits[name])   # own layout, no transposes


def test_gradients_flow_to_every_trainable_tensor():
    m = onnx.load(DATA / "digits_cnn.onnx")
    mod = OnnxModule(m, trainable_initializers(m))
    mod({"input": torch.from_numpy(_x(4, 1, 8, 8))})["logits"].square().sum().backward()
    for name, p in mod.named_weights().items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_unsupported_ops_are_named():
    node = helper.make_node("SparseConv", ["x"], ["y"], domain="ai.sparsekit")
    node2 = helper.make_node("Einsum", ["x", "x"], ["z"], equation="ij,ij->ij")
    m = _model([node, node2], [_vi("x", [2, 2])], [_vi("y", None)])
    with pytest.raises(SparsekitError, match="ai.sparsekit.SparseConv.*Einsum|Einsum.*SparseConv"):
        OnnxModule(m)


class _Exported(torch.nn.Module):
    """A PyTorch model with the layers real exports carry: Conv+BN+ReLU6, depthwise+HardSwish,
    Linear, LayerNorm, GELU (Erf), an LSTM with exporter-made zero states, Softmax."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, 2, 1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.fc = torch.nn.Linear(8, 16)
        self.ln = torch.nn.LayerNorm(16)
        self.lstm = torch.nn.LSTM(16, 12)
        self.head = torch.nn.Linear(12, 10)

    def forward(self, x):
        y = torch.nn.functional.relu6(self.bn(self.conv(x)))
        y = torch.nn.functional.hardswish(self.dw(y)).mean((2, 3))
        y = torch.nn.functional.gelu(self.ln(self.fc(y)))
        y, _ = self.lstm(y.unsqueeze(0))
        return self.head(y[0]).softmax(-1)


def exported_model() -> onnx.ModelProto:
    """_Exported through torch.onnx.export (the TorchScript exporter, opset 17): a real export."""
    import io
    import warnings
    torch.manual_seed(0)
    m = _Exported().eval()
    with torch.no_grad():   # non-trivial BN statistics
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(2, 3, 16, 16),), f, dynamo=False, input_names=["input"],
                          output_names=["probs"], dynamic_axes={"input": {0: "N"}, "probs": {0: "N"}},
                          opset_version=17)
    return onnx.load_from_string(f.getvalue())


def test_real_torch_export():
    m = exported_model()
    assert {"Constant", "ConstantOfShape", "LSTM", "HardSwish", "Erf", "LayerNormalization"} <= \
        {n.op_type for n in m.graph.node}
    _check(m, {"input": _x(2, 3, 16, 16)})
