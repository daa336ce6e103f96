"""CIFAR ResNets (He et al. 2016, Sec. 4.2) and the wider "x4" variants of CRD/RepDistiller.

A 3x3 stem, three stages of ``n = (depth - 2) / 6`` BasicBlocks (the first block of stages
2 and 3 halves the resolution), global average pooling and a linear head. Shortcuts that
change shape use a 1x1 conv + BN projection (option B), as in the CRD teachers; the paper's
parameter-free option A differs by < 1% of the parameters.

* ``resnet{8..110}``: stem 16, stages 16/32/64 channels.
* ``resnet8x4``, ``resnet32x4``: stem 32, stages 64/128/256 channels.

Taps are the stage outputs ``layer1..layer3``, which end with the block's ReLU.
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from otbench.errors import ConfigError

from .common import he_init
from .registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; ReLU after the residual sum."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-``depth`` for 32x32 inputs with the given stem and stage widths."""

    def __init__(
        self,
        depth: int,
        stem: int,
        widths: tuple[int, int, int],
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        chans = stem
        stages = []
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(chans, width, 2 if (i > 0 and j == 0) else 1))
                chans = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans, num_classes)
        he_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


_TAPS = ("layer1", "layer2", "layer3")

for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", family="cifar", taps=_TAPS, head="fc")(
        partial(CifarResNet, _depth, 16, (16, 32, 64))
    )
for _depth in (8, 32):
    register_model(f"resnet{_depth}x4", family="cifar", taps=_TAPS, head="fc")(
        partial(CifarResNet, _depth, 32, (64, 128, 256))
    )
