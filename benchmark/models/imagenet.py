"""torchvision ImageNet ResNets (He et al. 2016), optionally with published weights.

``weights="imagenet"`` in ``build_model`` fetches torchvision's IMAGENET1K_V1 weights
through torch.hub's cache (downloading when online). For ``in_channels != 3`` the 7x7
stem is replaced, so those weights then no longer fit and loading reports the mismatch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torchvision.models as tvm
from torch import nn
from torchvision.models import ResNet

from .common import he_init
from .registry import StateDict, register_model


def _fetch(weights: tvm.WeightsEnum) -> StateDict:
    """Download (or read from the torch.hub cache) a torchvision state_dict."""
    return weights.get_state_dict(progress=False, check_hash=True)


def _pretrained(weights: tvm.WeightsEnum) -> Callable[[], StateDict]:
    # Look _fetch up at call time so tests can stand in for the network.
    return lambda: _fetch(weights)


def _resnet(arch: Callable[..., ResNet], num_classes: int, in_channels: int = 3) -> nn.Module:
    model = arch(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = he_init(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False))
    return model


_ARCHS = (
    ("resnet18", tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    ("resnet34", tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    ("resnet50", tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
)
for _name, _arch, _weights in _ARCHS:
    register_model(
        _name,
        family="imagenet",
        taps=("layer1", "layer2", "layer3", "layer4"),
        head="fc",
        pretrained=_pretrained(_weights),
    )(partial(_resnet, _arch))
