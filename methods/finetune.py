"""Fine-tuning: the task loss alone, the baseline every method must beat."""

from __future__ import annotations

from torch import Tensor

from .base import StepOutputs, TransferMethod, register_method


@register_method("finetune")
class FineTune(TransferMethod):
    """No regularizer. In ``transfer`` the student starts from the teacher's weights."""

    summary = "task loss only (no regularizer)"
    reference = "the standard baseline"

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        return {}
