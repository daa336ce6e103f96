"""Attention transfer (Zagoruyko & Komodakis 2017), activation-based, p = 2.

A layer's attention map is ``Σ_c |A_c|^p`` over channels, flattened and L2-normalized; the
loss is ``β · Σ_layers mean_{batch, positions} (Q_S − Q_T)²`` with β = 1000, as in the authors'
``cifar.py`` (``opt.beta * sum(loss_groups)``), RepDistiller (``-b 1000``) and mdistiller.
Channel counts may differ; the larger map is pooled to the smaller.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from otbench.errors import ConfigError

from .base import (
    FEATURE_READS,
    HyperParam,
    StepOutputs,
    TransferContext,
    TransferMethod,
    per_pair_terms,
    pool_to_smaller,
    register_method,
)


def attention_map(features: Tensor, p: int = 2) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, H·W)``: normalized spatial attention."""
    return F.normalize(features.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(teacher: Tensor, student: Tensor, p: int = 2) -> Tensor:
    """Mean over batch and positions of ``(Q_S − Q_T)²``."""
    teacher, student = pool_to_smaller(teacher, student)
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


@register_method("at")
class AttentionTransfer(TransferMethod):
    """Matches where each layer looks, not what its channels say; widths may differ."""

    summary = "spatial attention maps (Zagoruyko & Komodakis 2017)"
    reference = ("Zagoruyko & Komodakis 2017; szagoruyko/attention-transfer cifar.py; "
                 "RepDistiller distiller_zoo/AT.py")
    reads = FEATURE_READS
    needs_layer_pairs = True
    hyperparams = (
        HyperParam("weight", "float", 1000.0, 10.0, 1e5, log=True,
                   help="β (the loss is β · Σ layers)",
                   source="attention-transfer cifar.py β = 1e3, RepDistiller -b 1000, "
                          "mdistiller AT.LOSS.FEAT_WEIGHT 1000; range: two decades either "
                          "side (ours)"),
        HyperParam("p", "int", 2, 1, 4, searchable=False, help="exponent of |A|^p",
                   source="the paper's and RepDistiller's p = 2"),
    )

    def __init__(self, context: TransferContext, **hparams: Any) -> None:
        super().__init__(context, **hparams)
        for pair in self.pairs:
            if len(pair.teacher_shape) != 3 or len(pair.student_shape) != 3:
                raise ConfigError(f"method 'at' needs convolutional layers (C, H, W), got "
                                  f"{pair.describe()}; pair two convolutional layers")

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        return per_pair_terms("at", self.pairs, step, self.hparams["weight"],
                              lambda _, t, s: at_loss(t, s, self.hparams["p"]))
