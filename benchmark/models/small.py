"""Small CNNs for the 8x8 digits data (and other tiny images): quick on CPU.

Three conv3x3-BN-ReLU stages (stages 2 and 3 halve the resolution and double the width),
global average pooling, linear head. Adaptive pooling makes any HxW >= 1 work.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from .common import conv_bn_relu, he_init
from .registry import register_model


class SmallCNN(nn.Module):
    """Widths ``(w, 2w, 4w)``; taps are the post-ReLU outputs of ``stage1..stage3``."""

    def __init__(self, width: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stage1 = conv_bn_relu(in_channels, width)
        self.stage2 = conv_bn_relu(width, 2 * width, stride=2)
        self.stage3 = conv_bn_relu(2 * width, 4 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        he_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.pool(x).flatten(1))


for _name, _width in (("cnn-s", 8), ("cnn-m", 16), ("cnn-l", 32)):
    register_model(_name, family="cnn", taps=("stage1", "stage2", "stage3"), head="fc")(
        partial(SmallCNN, _width)
    )
