"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

torchvision's MobileNetV2 (width 1.0) with the stem conv and the 24-channel stage at
stride 1 instead of 2, so the total stride is 8 (32x32 -> 4x4) rather than 32. Head:
``classifier.1`` (after dropout 0.2).

Taps are the last block at each resolution: ``features.3`` (24ch, 1/1), ``features.6``
(32ch, 1/2), ``features.13`` (96ch, 1/4) and ``features.18`` (1280ch, 1/8, the final
1x1 conv-BN-ReLU6). Inverted-residual outputs are linear bottlenecks by design, so only
the last tap is post-nonlinearity.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import MobileNetV2

from .registry import register_model

# t (expansion), c (channels), n (blocks), s (stride of the first block)
_CIFAR_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],  # stride 2 on ImageNet
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


@register_model(
    "mobilenetv2",
    family="cifar",
    taps=("features.3", "features.6", "features.13", "features.18"),
    head="classifier.1",
)
def mobilenetv2_cifar(num_classes: int, in_channels: int = 3) -> nn.Module:
    """torchvision MobileNetV2 with a stride-1 stem taking ``in_channels``."""
    model = MobileNetV2(num_classes=num_classes, inverted_residual_setting=_CIFAR_SETTING)
    stem = model.features[0][0]
    assert isinstance(stem, nn.Conv2d)
    new = nn.Conv2d(in_channels, stem.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(new.weight, mode="fan_out")
    model.features[0][0] = new
    return model
