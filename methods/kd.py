"""Knowledge distillation (Hinton, Vinyals & Dean 2015).

``(1 − α) · CE(s, y) + α · T² · KL(softmax(t/T) || softmax(s/T))``: the T² keeps the soft
term's gradient on the same scale as the hard one when T changes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from otbench.errors import ConfigError

from .base import HyperParam, StepOutputs, TransferMethod, register_method


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T² · KL(softmax(t/T) || softmax(s/T))``, averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return temperature**2 * kl


@register_method("kd")
class KnowledgeDistillation(TransferMethod):
    """Matches the teacher's softened predictions; needs the teacher's label set."""

    summary = "soft-target distillation (Hinton et al. 2015)"
    reference = "Hinton et al. 2015; RepDistiller distiller_zoo/KD.py, -r 0.1 -a 0.9 --kd_T 4"
    reads = frozenset({"student_logits", "teacher_logits"})
    needs_same_labels = True
    layers = "last"  # reads logits; the pair only feeds the diagnostics
    hyperparams = (
        HyperParam("alpha", "float", 0.9, 0.1, 1.0, help="weight of the soft term; the task "
                   "loss gets 1 − alpha",
                   source="RepDistiller -a 0.9 -r 0.1, mdistiller KD weights 0.9/0.1; range: "
                          "ours"),
        HyperParam("temperature", "float", 4.0, 1.0, 10.0, help="softmax temperature T",
                   source="RepDistiller --kd_T 4, mdistiller KD.TEMPERATURE 4; range: ours"),
    )

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        if step.teacher_logits is None or step.teacher_logits.shape != step.student_logits.shape:
            shape = None if step.teacher_logits is None else tuple(step.teacher_logits.shape)
            raise ConfigError(f"method 'kd' needs teacher logits shaped like the student's "
                              f"{tuple(step.student_logits.shape)}, got {shape}; teacher and "
                              "student must share the label set")
        soft = kd_loss(step.student_logits, step.teacher_logits, self.hparams["temperature"])
        return {"kd/soft": self.hparams["alpha"] * soft}

    def task_loss_weight(self) -> float:
        return 1.0 - self.hparams["alpha"]
