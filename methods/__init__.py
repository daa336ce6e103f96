"""Transfer methods: one file each, registered by name, pure tensor math.

Importing this package registers the built-in methods; :func:`get_method` looks one up.
"""

from . import (
    at,
    bss,
    cka,
    crd,
    delta,
    finetune,
    fitnets,
    kd,
    l2sp,
    nst,
    ot,
    ot_sinkhorn_div,
    ot_sliced,
    ot_unbalanced,
    pkt,
    rkd,
    sp,
)
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
    "TransferMethod", "at", "bss", "cka", "crd", "delta", "finetune", "fitnets", "get_method",
    "kd", "l2sp", "method_names", "nst", "ot", "ot_distance", "ot_sinkhorn_div", "ot_sliced",
    "ot_unbalanced", "pkt", "register_method", "rkd", "sp",
]
