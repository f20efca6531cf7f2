"""MobileNetV2 (Sandler et al. 2018): inverted residual blocks with linear bottlenecks."""
from __future__ import annotations

import onnx

from ._graph import (
    GraphBuilder,
    check_bool,
    check_int,
    check_positive,
    check_resolution,
    check_seed,
    finish,
    make_divisible,
)

# expansion t, output channels c, repeats n, first stride s (the paper's Table 2)
SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]

DESCRIPTION = (
    "MobileNetV2-1.0-224: 3x3/s2 stem conv (3->32) + ReLU6, 17 inverted residual blocks "
    "(expand 1x1 + Clip(0,6), depthwise 3x3 + Clip(0,6), linear project 1x1, Add residual when "
    "stride 1 and in==out: 10 of them), 1x1 conv to 1280 + ReLU6, GlobalAveragePool, Flatten, "
    "Gemm 1280->1000. 52 Conv (17 depthwise), ~3.5M parameters."
)


def build(
    width: float = 1.0,
    resolution: int = 224,
    num_classes: int = 1000,
    bn: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """Build MobileNetV2 with input ``input [1, 3, resolution, resolution]`` and output ``logits``.

    Channel counts follow torchvision: ``width`` scales them (multiples of 8) and the last conv
    keeps 1280 channels for ``width <= 1``. ReLU6 is Clip with constant min 0 / max 6 inputs.
    ``bn=True`` writes conv (no bias) + BatchNormalization pairs instead of biased convs.
    """
    check_positive(width=width)
    check_int(num_classes=num_classes)
    check_bool(bn=bn)
    check_seed(seed)
    check_resolution(resolution, 32)
    g = GraphBuilder("mobilenet_v2", seed=seed)
    x = g.add_input("input", [1, 3, resolution, resolution])

    def conv_bn(x, name, cin, cout, k, stride=1, group=1, gain=1.0):
        # torchvision's Conv2dNormActivation: <name>.0 conv, <name>.1 bn, <name>.2 ReLU6
        y = g.conv(x, f"{name}.0", cin, cout, k, stride=stride, group=group, bias=not bn, gain=gain)
        if bn:
            y = g.batchnorm(y, f"{name}.1", cout)
        return g.clip(y, f"{name}.2", 0.0, 6.0)

    def project(x, conv_name, bn_name, cin, cout, gain):
        # the linear bottleneck: a plain conv (+ bn), no activation
        y = g.conv(x, conv_name, cin, cout, 1, bias=not bn, gain=gain, relu_init=False)
        if bn:
            y = g.batchnorm(y, bn_name, cout)
        return y

    c = make_divisible(32 * width)
    last = make_divisible(1280 * max(1.0, width))
    x = conv_bn(x, "features.0", 3, c, 3, stride=2)
    idx = 1
    for t, out, n, s in SETTINGS:
        cout = make_divisible(out * width)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = int(round(c * t))
            prefix = f"features.{idx}.conv"
            y = x
            j = 0
            if t != 1:
                y = conv_bn(y, f"{prefix}.{j}", c, hidden, 1)
                j += 1
            y = conv_bn(y, f"{prefix}.{j}", hidden, hidden, 3, stride=stride, group=hidden)
            j += 1
            residual = stride == 1 and c == cout
            # linear projection; branches that feed a residual Add start small, as trained nets do
            y = project(y, f"{prefix}.{j}", f"{prefix}.{j + 1}", hidden, cout, 0.5 if residual else 1.0)
            if residual:
                y = g.add(x, y, f"features.{idx}.add")
            x = y
            c = cout
            idx += 1
    x = conv_bn(x, f"features.{idx}", c, last, 1)
    g.classifier_head(x, last, num_classes, "classifier.1")
    return finish(
        g,
        "mobilenet_v2",
        DESCRIPTION,
        width=width,
        resolution=resolution,
        num_classes=num_classes,
        bn=bn,
        seed=seed,
    )
