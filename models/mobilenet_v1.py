"""MobileNetV1 (Howard et al. 2017): a 3x3 stride-2 stem and 13 depthwise-separable blocks."""
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

# (output channels, stride of the depthwise conv) for the 13 depthwise-separable blocks
BLOCKS = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
]

DESCRIPTION = (
    "MobileNetV1-1.0-224: 3x3/s2 stem conv (3->32), 13 depthwise-separable blocks "
    "(depthwise 3x3 Conv group=C + Relu, pointwise 1x1 Conv + Relu), GlobalAveragePool, Flatten, "
    "Gemm 1024->1000. 27 Conv (13 depthwise), ~4.2M parameters."
)


def build(
    width: float = 1.0,
    resolution: int = 224,
    num_classes: int = 1000,
    bn: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """Build MobileNetV1 with input ``input [1, 3, resolution, resolution]`` and output ``logits``.

    ``width`` scales every channel count (rounded to a multiple of 8); ``bn=True`` writes each
    conv without bias followed by BatchNormalization, as an export without BN folding does.
    """
    check_positive(width=width)
    check_int(num_classes=num_classes)
    check_bool(bn=bn)
    check_seed(seed)
    check_resolution(resolution, 32)
    g = GraphBuilder("mobilenet_v1", seed=seed)
    x = g.add_input("input", [1, 3, resolution, resolution])

    def conv_act(x, name, cin, cout, k, stride=1, group=1):
        y = g.conv(x, name, cin, cout, k, stride=stride, group=group, bias=not bn)
        if bn:
            y = g.batchnorm(y, name.replace("conv", "bn") if "conv" in name else name + ".bn", cout)
        return g.relu(y, name.replace("conv", "relu") if "conv" in name else name + ".relu")

    c = make_divisible(32 * width)
    x = conv_act(x, "conv1", 3, c, 3, stride=2)
    for i, (out, stride) in enumerate(BLOCKS):
        cout = make_divisible(out * width)
        x = conv_act(x, f"layers.{i}.conv_dw", c, c, 3, stride=stride, group=c)
        x = conv_act(x, f"layers.{i}.conv_pw", c, cout, 1)
        c = cout
    g.classifier_head(x, c, num_classes, "fc")
    return finish(
        g,
        "mobilenet_v1",
        DESCRIPTION,
        width=width,
        resolution=resolution,
        num_classes=num_classes,
        bn=bn,
        seed=seed,
    )
