"""The model zoo: registered architectures, weight loading, heads and feature taps.

Importing this package registers every model (small CNNs, CIFAR ResNets/WRNs/VGGs/
MobileNetV2, torchvision ImageNet ResNets).
"""

from __future__ import annotations

# Importing the architecture modules registers their models.
from . import imagenet, mobilenet, resnet_cifar, small, vgg, wrn  # noqa: F401
from .registry import (
    ModelSpec,
    build_model,
    get_model_spec,
    head_parameter_names,
    model_names,
    register_model,
    replace_head,
)
from .taps import FeatureTaps, default_layer_pairs, feature_shapes

__all__ = [
    "FeatureTaps",
    "ModelSpec",
    "build_model",
    "default_layer_pairs",
    "feature_shapes",
    "get_model_spec",
    "head_parameter_names",
    "model_names",
    "register_model",
    "replace_head",
]
