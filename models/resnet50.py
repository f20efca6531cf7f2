"""ResNet-50 (He et al. 2016), torchvision's v1.5 layout (stride on the 3x3 conv)."""
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

# (bottleneck width "planes", blocks, stride of the first block) for layer1..layer4
STAGES = [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]
EXPANSION = 4

DESCRIPTION = (
    "ResNet-50 (torchvision v1.5): 7x7/s2 stem conv + BN + Relu, MaxPool 3x3/s2, 16 bottleneck "
    "blocks 3-4-6-3 (1x1, 3x3, 1x1 convs; 1x1 downsample conv on the first shortcut of each "
    "stage; Add + Relu), GlobalAveragePool, Flatten, Gemm 2048->1000. 53 Conv, 16 Add, "
    "~25.6M parameters; BatchNormalization unfolded by default."
)


def build(
    resolution: int = 224,
    width: float = 1.0,
    num_classes: int = 1000,
    bn: bool = True,
    seed: int = 0,
) -> onnx.ModelProto:
    """Build ResNet-50 with input ``input [1, 3, resolution, resolution]`` and output ``logits``.

    ``width`` scales every channel count (multiples of 8). ``bn=True`` (default) writes each conv
    without bias followed by BatchNormalization, as an unfolded torchvision export; ``bn=False``
    writes biased convs, as an export with BN folded into the convs.
    """
    check_positive(width=width)
    check_int(num_classes=num_classes)
    check_bool(bn=bn)
    check_seed(seed)
    check_resolution(resolution, 32)
    g = GraphBuilder("resnet50", seed=seed)
    x = g.add_input("input", [1, 3, resolution, resolution])

    def conv_bn(x, conv_name, bn_name, cin, cout, k, stride=1, gain=1.0, relu_init=True):
        y = g.conv(x, conv_name, cin, cout, k, stride=stride, bias=not bn, gain=gain, relu_init=relu_init)
        if bn:
            y = g.batchnorm(y, bn_name, cout)
        return y

    stem = make_divisible(64 * width)
    x = conv_bn(x, "conv1", "bn1", 3, stem, 7, stride=2)
    x = g.relu(x, "relu")
    x = g.maxpool(x, "maxpool", kernel=3, stride=2, pad=1)
    c = stem
    for s, (planes, blocks, first_stride) in enumerate(STAGES):
        mid = make_divisible(planes * width)
        cout = mid * EXPANSION
        for b in range(blocks):
            stride = first_stride if b == 0 else 1
            p = f"layer{s + 1}.{b}"
            identity = x
            y = conv_bn(x, f"{p}.conv1", f"{p}.bn1", c, mid, 1)
            y = g.relu(y, f"{p}.relu")
            y = conv_bn(y, f"{p}.conv2", f"{p}.bn2", mid, mid, 3, stride=stride)
            y = g.relu(y, f"{p}.relu")
            # the residual branch's last conv starts small so 16 Adds do not compound the variance
            y = conv_bn(y, f"{p}.conv3", f"{p}.bn3", mid, cout, 1, gain=0.3, relu_init=False)
            if stride != 1 or c != cout:
                identity = conv_bn(
                    x, f"{p}.downsample.0", f"{p}.downsample.1", c, cout, 1, stride=stride,
                    relu_init=False,
                )
            y = g.add(y, identity, f"{p}.add")
            x = g.relu(y, f"{p}.relu")
            c = cout
    g.classifier_head(x, c, num_classes, "fc")
    return finish(
        g,
        "resnet50",
        DESCRIPTION,
        resolution=resolution,
        width=width,
        num_classes=num_classes,
        bn=bn,
        seed=seed,
    )
