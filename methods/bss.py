"""Batch spectral shrinkage (Chen, Wang, Fu, Long & Wang 2019).

Fine-tuning with little data transfers, besides useful knowledge, spectral components of the
features that do not fit the new task ("negative transfer"); they sit in the smallest singular
values of the batch feature matrix. BSS shrinks them:

    L_bss = η · Σ_{i=1..k} σ_{-i}(F)²

where ``F`` is the ``B × C`` matrix of the student's features of the batch and ``σ_{-i}`` its
``i``-th smallest singular value (of ``min(B, C)``). ``F`` is the deepest student tap (the last
layer pair) globally average-pooled, i.e. the features the classifier reads, as in the paper.
Defaults ``k = 1, η = 1e-3`` are the paper's. Reads student features only: no teacher is needed
and it applies to any pairing (the pair only names the student layer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from otbench.errors import ConfigError

from .base import (
    HyperParam,
    StepOutputs,
    TransferContext,
    TransferMethod,
    deepest_pair,
    pooled,
    register_method,
)


def spectral_shrinkage(features: Tensor, k: int = 1) -> Tensor:
    """``Σ`` of the ``k`` smallest squared singular values of a ``(B, C)`` matrix."""
    singular = torch.linalg.svdvals(features)  # descending
    return singular[-min(k, len(singular)):].pow(2).sum()


@register_method("bss")
class BatchSpectralShrinkage(TransferMethod):
    """Penalizes the weakest spectral directions of the student's batch features."""

    summary = "batch spectral shrinkage of the smallest singular values (Chen et al. 2019)"
    reference = ("Chen et al. 2019; Transfer-Learning-Library tllib/regularization/bss.py, "
                 "examples/task_adaptation/image_classification/bss.py")
    layers = "last"
    reads = frozenset({"student_features"})
    needs_layer_pairs = True
    hyperparams = (
        HyperParam("weight", "float", 1e-3, 1e-5, 1e-1, log=True,
                   help="η, the weight of the summed squared singular values",
                   source="the paper's η = 1e-3 (tllib bss.py --trade-off 0.001); range: ours"),
        HyperParam("k", "int", 1, 1, 8, help="how many of the smallest singular values",
                   source="the paper's k = 1 (tllib bss.py -k 1); range: ours"),
    )

    def __init__(self, context: TransferContext, **hparams: Any) -> None:
        super().__init__(context, **hparams)
        self.pair = deepest_pair(self.pairs, "bss")

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        try:
            features = step.student_features[self.pair.student]
        except KeyError:
            raise ConfigError(f"no features recorded for student layer {self.pair.student!r}; "
                              f"the pair is {self.pair.describe()}") from None
        shrink = spectral_shrinkage(pooled(features), self.hparams["k"])
        return {f"bss/{self.pair.key}": self.hparams["weight"] * self.pair.weight * shrink}
