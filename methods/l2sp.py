"""L2-SP (Li, Grandvalet & Davoine 2018): weight decay toward the starting point.

``α/2 · ||w_S − w⁰_S||²`` on the transferred weights plus ``β/2 · ||w_new||²`` on the new head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import HyperParam, StepOutputs, TransferContext, TransferMethod, register_method


@register_method("l2sp")
class L2SP(TransferMethod):
    """Pulls every transferred weight toward its pre-trained value."""

    summary = "L2 penalty toward the starting weights (Li et al. 2018)"
    reads = frozenset({"student_weights", "start_weights"})
    needs_same_architecture = True
    hyperparams = (
        HyperParam("alpha", "float", 0.01, 1e-4, 1.0, log=True,
                   help="weight of ||w − w0||² on the transferred weights"),
        HyperParam("beta", "float", 1e-4, 1e-6, 1e-2, log=True,
                   help="weight of ||w||² on the new head"),
    )

    def __init__(self, context: TransferContext, **hparams: Any) -> None:
        super().__init__(context, **hparams)
        self.student = [context.student]  # a list: not registered as a submodule
        self.head = context.head
        shared = {n: w for n, w in context.start_weights.items() if n not in context.head}
        for name, weight in shared.items():
            self.register_buffer(_buffer_name(name), weight.detach().clone(), persistent=False)
        self.shared_names = tuple(shared)

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        params = dict(self.student[0].named_parameters())
        drift = torch.stack([(params[n] - getattr(self, _buffer_name(n))).pow(2).sum()
                             for n in self.shared_names]).sum()
        head = torch.stack([params[n].pow(2).sum() for n in self.head]).sum()
        return {"l2sp/start": 0.5 * self.hparams["alpha"] * drift,
                "l2sp/head": 0.5 * self.hparams["beta"] * head}


def _buffer_name(param_name: str) -> str:
    return "start__" + param_name.replace(".", "__")
