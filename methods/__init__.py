"""Transfer methods: one file each, registered by name, pure tensor math.

Importing this package registers the built-in methods; :func:`get_method` looks one up.
"""

from . import at, finetune, fitnets, kd, l2sp, ot
from .base import (
    HyperParam,
    LayerPair,
    StepOutputs,
    TransferContext,
    TransferMethod,
    get_method,
    method_names,
    register_method,
)
from .ot import OTSettings, ot_distance

__all__ = [
    "HyperParam", "LayerPair", "OTSettings", "StepOutputs", "TransferContext",
    "TransferMethod", "at", "finetune", "fitnets", "get_method", "kd", "l2sp",
    "method_names", "ot", "ot_distance", "register_method",
]
