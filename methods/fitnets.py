"""FitNets hints (Romero et al. 2015): regress the teacher's features from the student's.

A learned 1×1 convolution (a linear map for flat layers) takes the student's features to the
teacher's width; the loss is the mean squared error to the teacher's features. The regressors
are trainable parameters of the method, which the optimizer must include.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from otbench.errors import ConfigError

from .base import (
    FEATURE_READS,
    HyperParam,
    LayerPair,
    StepOutputs,
    TransferContext,
    TransferMethod,
    per_pair_terms,
    pool_to_smaller,
    register_method,
)


def make_regressor(pair: LayerPair) -> nn.Module:
    """1×1 conv + BN (conv layers) or a linear map (flat layers), student → teacher width."""
    t, s = pair.teacher_shape, pair.student_shape
    if len(t) != len(s) or len(t) not in (1, 3):
        raise ConfigError(f"method 'fitnets' cannot regress {pair.describe()}: pair two "
                          "convolutional or two fully connected layers")
    if len(t) == 1:
        return nn.Linear(s[0], t[0])
    return nn.Sequential(nn.Conv2d(s[0], t[0], kernel_size=1, bias=False), nn.BatchNorm2d(t[0]))


@register_method("fitnets")
class FitNets(TransferMethod):
    """Hint loss through learned regressors; works across widths."""

    summary = "feature regression through a learned 1x1 conv (Romero et al. 2015)"
    reads = FEATURE_READS
    needs_layer_pairs = True
    hyperparams = (
        HyperParam("weight", "float", 1.0, 1e-3, 100.0, log=True,
                   help="weight of the summed hint losses"),
    )

    def __init__(self, context: TransferContext, **hparams: Any) -> None:
        super().__init__(context, **hparams)
        self.regressors = nn.ModuleDict({_key(p): make_regressor(p) for p in self.pairs})

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        return per_pair_terms("fitnets", self.pairs, step, self.hparams["weight"], self.hint_loss)

    def hint_loss(self, pair: LayerPair, teacher: Tensor, student: Tensor) -> Tensor:
        """MSE between the regressed student features and the teacher's."""
        hint = self.regressors[_key(pair)](student)
        if hint.dim() == 4:
            teacher, hint = pool_to_smaller(teacher, hint)
        return F.mse_loss(hint, teacher)


def _key(pair: LayerPair) -> str:
    return pair.student.replace(".", "__")
