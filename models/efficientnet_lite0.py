"""EfficientNet-Lite0 (Tan & Le 2019, the Lite variant for mobile CPUs): MBConv blocks with
ReLU6 and no squeeze-excitation, 3x3 and 5x5 depthwise convs, EfficientNet-B0's channel counts."""
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

# expansion, depthwise kernel, first stride, output channels, repeats (B0's stages; Lite0 keeps
# the depth and width of B0 and drops squeeze-excitation and swish for ReLU6)
STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]

DESCRIPTION = (
    "EfficientNet-Lite0-224: 3x3/s2 stem conv (3->32) + ReLU6, 16 MBConv blocks in 7 stages "
    "(expand 1x1 + Clip(0,6) except in the first stage, depthwise 3x3 or 5x5 + Clip(0,6), linear "
    "project 1x1, Add residual when stride 1 and in==out: 9 of them; no squeeze-excitation), "
    "1x1 conv to 1280 + ReLU6, GlobalAveragePool, Flatten, Gemm 1280->1000. 49 Conv (16 depthwise: "
    "7 3x3, 9 5x5), ~4.6M parameters."
)


def build(
    width: float = 1.0,
    resolution: int = 224,
    num_classes: int = 1000,
    bn: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """Build EfficientNet-Lite0 with input ``input [1, 3, resolution, resolution]`` and output
    ``logits``.

    Node names follow timm's ``efficientnet_lite0`` (``conv_stem``, ``blocks.<stage>.<i>.conv_pw``
    / ``conv_dw`` / ``conv_pwl``, ``conv_head``, ``classifier``). ``width`` scales the channel
    counts (multiples of 8); the head keeps 1280 channels for ``width <= 1``. ReLU6 is Clip with
    constant min 0 / max 6 inputs. ``bn=True`` writes conv (no bias) + BatchNormalization pairs
    instead of biased convs. Padding is symmetric ``k // 2`` (PyTorch style, not TF "SAME").
    """
    check_positive(width=width)
    check_int(num_classes=num_classes)
    check_bool(bn=bn)
    check_seed(seed)
    check_resolution(resolution, 32)
    g = GraphBuilder("efficientnet_lite0", seed=seed)
    x = g.add_input("input", [1, 3, resolution, resolution])

    def conv_bn(x, conv_name, bn_name, cin, cout, k, stride=1, group=1, act=True, gain=1.0):
        # timm's conv + BatchNormAct2d: <conv_name> conv, <bn_name> bn, <bn_name>.act ReLU6
        y = g.conv(x, conv_name, cin, cout, k, stride=stride, group=group, bias=not bn, gain=gain,
                   relu_init=act)
        if bn:
            y = g.batchnorm(y, bn_name, cout)
        return g.clip(y, f"{bn_name}.act", 0.0, 6.0) if act else y

    c = make_divisible(32 * width)
    last = make_divisible(1280 * max(1.0, width))
    x = conv_bn(x, "conv_stem", "bn1", 3, c, 3, stride=2)
    for s, (t, k, first_stride, out, n) in enumerate(STAGES):
        cout = make_divisible(out * width)
        for i in range(n):
            stride = first_stride if i == 0 else 1
            p = f"blocks.{s}.{i}"
            residual = stride == 1 and c == cout
            # the linear projection; branches that feed a residual Add start small, as trained
            # nets do
            gain = 0.5 if residual else 1.0
            if t == 1:  # DepthwiseSeparableConv: depthwise, then the projection
                y = conv_bn(x, f"{p}.conv_dw", f"{p}.bn1", c, c, k, stride=stride, group=c)
                y = conv_bn(y, f"{p}.conv_pw", f"{p}.bn2", c, cout, 1, act=False, gain=gain)
            else:  # InvertedResidual: expand, depthwise, project
                hidden = c * t
                y = conv_bn(x, f"{p}.conv_pw", f"{p}.bn1", c, hidden, 1)
                y = conv_bn(y, f"{p}.conv_dw", f"{p}.bn2", hidden, hidden, k, stride=stride,
                            group=hidden)
                y = conv_bn(y, f"{p}.conv_pwl", f"{p}.bn3", hidden, cout, 1, act=False, gain=gain)
            if residual:
                y = g.add(x, y, f"{p}.add")
            x = y
            c = cout
    x = conv_bn(x, "conv_head", "bn2", c, last, 1)
    g.classifier_head(x, last, num_classes, "classifier")
    return finish(
        g,
        "efficientnet_lite0",
        DESCRIPTION,
        width=width,
        resolution=resolution,
        num_classes=num_classes,
        bn=bn,
        seed=seed,
    )
