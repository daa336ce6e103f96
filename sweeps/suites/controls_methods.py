"""The controls suite's two extra methods (a plugin the suite names under ``plugins:``).

* ``scratch``: the transfer scenario's student, its weights drawn afresh before training;
  against ``finetune`` (the same student started from the teacher's weights, same seeds and
  images) it is a positive control: starting from the teacher is known to help.
* ``finetune-copy``: ``finetune`` under another name, nothing else changed; against
  ``finetune`` it is the negative control: no difference may be marked.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from otbench.methods import TransferMethod, register_method
from otbench.methods.base import StepOutputs, TransferContext
from otbench.methods.finetune import FineTune


@register_method("scratch")
class Scratch(TransferMethod):
    """No regularizer, and the teacher's weights discarded: every layer with parameters is
    re-initialized (from the run's seeded generator) before the optimizer sees them."""

    summary = "transfer control: the student re-initialized, trained on the task loss alone"
    needs_same_architecture = True

    def __init__(self, context: TransferContext, **hparams: Any) -> None:
        super().__init__(context, **hparams)
        for module in context.student.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        return {}


@register_method("finetune-copy")
class FineTuneCopy(FineTune):
    """``finetune`` registered under a second name: the negative control."""

    summary = "negative control: finetune under another name"
