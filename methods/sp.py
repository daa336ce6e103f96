"""Similarity-preserving distillation (Tung & Mori 2019).

Per layer pair, each side's batch similarity matrix ``G = Q·Qᵀ`` (``Q``: the ``B × C·H·W``
flattened features) is L2-normalized row by row, ``G̃ = normalize_rows(G)``; the loss is
``γ · Σ_pairs w_l · ||G̃_T − G̃_S||_F² / B²``. Only the batch size must agree, so any widths and
spatial sizes pair up. ``γ = 3000`` is the paper's CIFAR-10 value (also the CRD benchmark's).
By default the loss sits on the last stage pair only, as in the paper (the end of the last
group) and RepDistiller (``feat[-2]``, the last stage before pooling); ``layers`` can sum it
over more pairs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from otbench.errors import ConfigError

from .base import (
    FEATURE_READS,
    HyperParam,
    LayerPair,
    StepOutputs,
    TransferMethod,
    per_pair_terms,
    register_method,
)


def similarity_matrix(features: Tensor) -> Tensor:
    """``(B, ...)`` -> the row-normalized ``(B, B)`` Gram matrix of the flattened features."""
    flat = features.reshape(features.shape[0], -1)
    return F.normalize(flat @ flat.t(), p=2, dim=1)


def sp_loss(_pair: LayerPair | None, teacher: Tensor, student: Tensor) -> Tensor:
    """``||G̃_T − G̃_S||_F² / B²`` (teacher constant)."""
    if teacher.shape[0] != student.shape[0]:
        raise ConfigError(f"sp needs the same batch on both sides, got teacher "
                          f"{tuple(teacher.shape)} and student {tuple(student.shape)}")
    batch = student.shape[0]
    diff = similarity_matrix(teacher.detach()) - similarity_matrix(student)
    return diff.pow(2).sum() / batch**2


@register_method("sp")
class SimilarityPreserving(TransferMethod):
    """Inputs that look alike to the teacher should look alike to the student."""

    summary = "similarity-preserving: batch Gram matrices (Tung & Mori 2019)"
    reference = ("Tung & Mori 2019; RepDistiller distiller_zoo/SP.py, helper/loops.py "
                 "(feat[-2])")
    reads = FEATURE_READS
    layers = "last"
    needs_layer_pairs = True
    hyperparams = (
        HyperParam("weight", "float", 3000.0, 10.0, 1e5, log=True,
                   help="γ, the weight of the summed losses",
                   source="the paper's CIFAR value, RepDistiller -b 3000; range: ours"),
    )

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        return per_pair_terms("sp", self.pairs, step, self.hparams["weight"], sp_loss)
