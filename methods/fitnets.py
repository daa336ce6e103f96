"""FitNets hints (Romero et al. 2015): regress the teacher's features from the student's.

A learned regressor, 1×1 convolution → BN → ReLU as RepDistiller's ``ConvReg`` (a linear map
for flat layers), takes the student's features to the teacher's width; the loss is
``weight · MSE`` to the teacher's features, with the CRD benchmark's weight 100 and one hint at
the middle stage (RepDistiller ``--hint_layer 2``, mdistiller ``HINT_LAYER: 2``). The regressors
are trainable parameters of the method, which the optimizer must include.

Departure: ``ConvReg`` matches spatial sizes with a strided or transposed convolution; here
the larger map is average-pooled to the smaller before the loss (as AT and NST do), so the
regressor is always 1×1. In the CRD pairings the hint stage has equal sizes, where both agree.
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
    """1×1 conv → BN → ReLU (conv layers) or a linear map (flat layers), student → teacher
    width."""
    t, s = pair.teacher_shape, pair.student_shape
    if len(t) != len(s) or len(t) not in (1, 3):
        raise ConfigError(f"method 'fitnets' cannot regress {pair.describe()}: pair two "
                          "convolutional or two fully connected layers")
    if len(t) == 1:
        return nn.Linear(s[0], t[0])
    return nn.Sequential(nn.Conv2d(s[0], t[0], kernel_size=1, bias=False), nn.BatchNorm2d(t[0]),
                         nn.ReLU())


@register_method("fitnets")
class FitNets(TransferMethod):
    """Hint loss through learned regressors; works across widths."""

    summary = "feature regression through a learned 1x1 conv (Romero et al. 2015)"
    reference = ("Romero et al. 2015; RepDistiller distiller_zoo/FitNet.py, models/util.py "
                 "ConvReg, train_student.py --hint_layer 2; mdistiller FITNET config")
    reads = FEATURE_READS
    layers = "middle"
    needs_layer_pairs = True
    hyperparams = (
        HyperParam("weight", "float", 100.0, 1.0, 1e4, log=True,
                   help="weight of the summed hint losses",
                   source="RepDistiller scripts/run_cifar_distill.sh -b 100, mdistiller "
                          "FITNET.LOSS.FEAT_WEIGHT 100; range: two decades either side (ours)"),
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
