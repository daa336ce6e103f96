"""Wide ResNets WRN-d-k for CIFAR (Zagoruyko & Komodakis 2016), without dropout.

A 3x3 stem of 16 channels, three groups of ``n = (d - 4) / 6`` pre-activation blocks
(BN-ReLU-conv twice) with 16k/32k/64k channels, a final BN-ReLU, global average pooling
and a linear head.

Taps: ``block1``, ``block2``, ``block3``, the group outputs, which in a pre-activation network
are residual sums *before* BN-ReLU (the next group, or the final BN-ReLU, applies it): the
features RepDistiller's ``wrn.py`` hands to AT, NST, SP and FitNets (``preact=False``).
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from otbench.errors import ConfigError

from .common import he_init
from .registry import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 x2; a shape-changing shortcut is a 1x1 conv of the activated input."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen``."""

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        chans = 16
        groups = []
        for i, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(chans, width, 2 if (i > 0 and j == 0) else 1))
                chans = width
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(chans)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans, num_classes)
        he_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(self.act(self.bn(x))).flatten(1))


for _depth, _widen in ((16, 2), (40, 2)):
    register_model(
        f"wrn-{_depth}-{_widen}", family="cifar", taps=("block1", "block2", "block3"), head="fc"
    )(partial(WideResNet, _depth, _widen))
