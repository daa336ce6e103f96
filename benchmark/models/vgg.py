"""CIFAR VGGs with BN, laid out as in the CRD (Tian et al. 2020) experiments.

Five blocks of conv3x3-BN-ReLU (widths 64/128/256/512/512; ``vgg13`` has two convs per
block, ``vgg8`` one), 2x2 max-pooling after blocks 0-2 (32x32 -> 4x4, where blocks 3 and 4
both run), global average pooling and a single ``Linear(512, num_classes)`` head (no
ImageNet-style FC stack). Convs have no bias since BN follows. About 9.4M (vgg13) and
3.96M (vgg8) parameters at 100 classes. Taps: each block's post-ReLU output.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from .common import conv_bn_relu, he_init
from .registry import register_model

_WIDTHS = (64, 128, 256, 512, 512)


class CifarVGG(nn.Module):
    """VGG with ``convs`` conv-BN-ReLU units per block."""

    def __init__(self, convs: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        chans = in_channels
        for i, width in enumerate(_WIDTHS):
            units = [conv_bn_relu(chans if j == 0 else width, width) for j in range(convs)]
            setattr(self, f"block{i}", nn.Sequential(*units))
            chans = width
        self.pool = nn.MaxPool2d(2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans, num_classes)
        he_init(self)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(len(_WIDTHS)):
            x = getattr(self, f"block{i}")(x)
            if i < 3:
                x = self.pool(x)
        return self.fc(self.avgpool(x).flatten(1))


for _name, _convs in (("vgg8", 1), ("vgg13", 2)):
    register_model(_name, family="cifar", taps=tuple(f"block{i}" for i in range(5)), head="fc")(
        partial(CifarVGG, _convs)
    )
