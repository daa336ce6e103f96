"""L2-SP (Li, Grandvalet & Davoine 2018): weight decay toward the starting point.

``α/2 · ||w_S − w⁰_S||²`` on the transferred weights plus ``β/2 · ||w_new||²`` on the new head.
The optimizer puts no weight decay on the transferred weights (it would pull them toward 0
against the penalty, as the Transfer-Learning-Library examples avoid with weight decay 0); the
rest keeps the run's weight decay.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import (
    HEAD_BETA,
    HyperParam,
    StepOutputs,
    TransferContext,
    TransferMethod,
    head_penalty,
    register_method,
)


@register_method("l2sp")
class L2SP(TransferMethod):
    """Pulls every transferred weight toward its pre-trained value."""

    summary = "L2 penalty toward the starting weights (Li et al. 2018)"
    reference = ("Li, Grandvalet & Davoine 2018; Transfer-Learning-Library "
                 "tllib/regularization/delta.py SPRegularization")
    reads = frozenset({"student_weights", "start_weights"})
    needs_same_architecture = True
    hyperparams = (
        HyperParam("alpha", "float", 0.01, 1e-4, 1.0, log=True,
                   help="weight of ||w − w0||² on the transferred weights",
                   source="Transfer-Learning-Library delta.py example, --regularization-type "
                          "l2_sp --trade-off-backbone 0.01 (the paper selects α by "
                          "cross-validation); range: ours"),
        HEAD_BETA,
    )

    def __init__(self, context: TransferContext, **hparams: Any) -> None:
        super().__init__(context, **hparams)
        self.student = [context.student]  # a list: not registered as a submodule
        self.head = context.head
        shared = {n: w for n, w in context.start_weights.items() if n not in context.head}
        for name, weight in shared.items():
            self.register_buffer(_buffer_name(name), weight.detach().clone(), persistent=False)
        self.shared_names = tuple(shared)

    def anchored_parameters(self) -> frozenset[str]:
        return frozenset(self.shared_names)

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        params = dict(self.student[0].named_parameters())
        drift = torch.stack([(params[n] - getattr(self, _buffer_name(n))).pow(2).sum()
                             for n in self.shared_names]).sum()
        return {"l2sp/start": 0.5 * self.hparams["alpha"] * drift,
                "l2sp/head": head_penalty(self.hparams["beta"], params, self.head,
                                          drift.device)}


def _buffer_name(param_name: str) -> str:
    return "start__" + param_name.replace(".", "__")
