"""Contrastive representation distillation (Tian, Krishnan & Isola 2020), with a FIFO queue.

The deepest pair's globally average-pooled features go through learned linear heads and L2
normalization, ``s = g_S(f_S)``, ``t = g_T(f_T)`` (both ``feat_dim``, trainable method
parameters). Two symmetric NCE losses follow CRD: the student embedding ``s_i`` must pick its
teacher ``t_i`` out of ``m`` negatives ``t'`` (teacher embeddings of other inputs), and ``t_i``
must pick ``s_i`` out of student negatives. With ``e = exp(<anchor, ·>/τ)`` and the constant ``z``
(the mean of ``e`` over the first batch, CRD's ``Z / N``):

    L = −(1/B) Σ_i [ log e⁺/(e⁺ + m z) + Σ_k log m z/(e_k + m z) ]   per direction

which is CRD's ``ContrastLoss`` with ``P = e/Z`` and noise ``P_n = 1/N``: the dataset size ``N``
cancels. Weight β = 0.8, τ = 0.07 and ``feat_dim`` = 128 are CRD's defaults.

Departures from CRD, and why. CRD keeps a memory bank with one momentum-averaged embedding per
training example, addressed by example index, and draws 16384 negatives per anchor from it
(examples of other classes, its "exact" mode); the positive is the memory entry of the anchor's
own example. A step here carries no example indices, so:

* negatives come from a FIFO queue (MoCo-style) of the last ``queue_size`` student and teacher
  embeddings (detached, with their labels), plus the other examples of the current batch;
  the queue starts empty and grows, so ``m`` is capped by what has been seen;
* as in CRD's "exact" mode, candidates with the anchor's label are not negatives; this also
  keeps stale copies of the anchor's own example (queued in an earlier epoch) out, which a
  queue longer than an epoch would otherwise contain;
* the positive is the other network's embedding of the same input in the current batch
  (detached, as CRD's memory is), not a momentum-averaged memory entry.

As in CRD, the student-anchored loss trains the student and ``g_S``, the teacher-anchored one
trains ``g_T`` (the teacher network is frozen). ``m`` may differ per anchor (labels), and is
used per anchor in the noise term.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from otbench.errors import ConfigError

from .base import (
    FEATURE_READS,
    HyperParam,
    StepOutputs,
    TransferContext,
    TransferMethod,
    deepest_pair,
    pair_features,
    pooled,
    register_method,
)


def nce_loss(anchor: Tensor, positive: Tensor, negatives: Tensor, valid: Tensor,
             temperature: float, log_z: Tensor | float) -> Tensor:
    """CRD's NCE loss, batch-averaged, in log space.

    ``anchor, positive``: ``(B, D)`` unit rows; ``negatives``: ``(M, D)``; ``valid``: ``(B, M)``
    bool (which candidates are negatives of each anchor); ``log_z``: log of the constant ``z``.
    Positives and negatives carry no gradient.
    """
    positive, negatives = positive.detach(), negatives.detach()
    pos = (anchor * positive).sum(1) / temperature  # log e⁺
    neg = anchor @ negatives.t() / temperature  # log e_k
    count = valid.sum(1).to(anchor.dtype)
    log_noise = count.log() + log_z  # log(m z); -inf when m = 0
    log_d1 = pos - torch.logaddexp(pos, log_noise)
    log_d0 = log_noise.unsqueeze(1) - torch.logaddexp(neg, log_noise.unsqueeze(1))
    log_d0 = torch.where(valid, log_d0, torch.zeros_like(log_d0))
    return -(log_d1 + log_d0.sum(1)).mean()


def mean_exp_log(anchor: Tensor, positive: Tensor, negatives: Tensor, valid: Tensor,
                 temperature: float) -> Tensor:
    """``log`` of the mean of ``e`` over positives and valid negatives (CRD's ``Z/N``)."""
    with torch.no_grad():
        pos = (anchor * positive).sum(1) / temperature
        neg = (anchor @ negatives.t() / temperature)[valid]
        scores = torch.cat([pos, neg])
        return torch.logsumexp(scores, 0) - math.log(scores.numel())


@register_method("crd")
class ContrastiveRD(TransferMethod):
    """Student and teacher embeddings of one input must recognize each other among others."""

    summary = "contrastive representation distillation, NCE with a FIFO queue (Tian et al. 2020)"
    reference = "Tian et al. 2020; RepDistiller crd/criterion.py, crd/memory.py, -a 0 -b 0.8"
    reads = FEATURE_READS
    layers = "last"
    needs_layer_pairs = True
    hyperparams = (
        HyperParam("weight", "float", 0.8, 1e-2, 10.0, log=True,
                   help="β, weight of the two NCE losses",
                   source="RepDistiller -b 0.8; range: ours"),
        HyperParam("temperature", "float", 0.07, 0.02, 0.5, log=True,
                   help="τ of exp(<s, t>/τ)",
                   source="RepDistiller --nce_t 0.07; range: ours"),
        HyperParam("queue_size", "int", 4096, 64, 65536, log=True, searchable=False,
                   help="FIFO queue of past embeddings used as negatives",
                   source="ours: replaces CRD's 16384-negative memory bank (see the "
                          "docstring)"),
        HyperParam("feat_dim", "int", 128, 16, 1024, log=True, searchable=False,
                   help="embedding dimension of the two linear heads",
                   source="RepDistiller --feat_dim 128"),
    )

    def __init__(self, context: TransferContext, **hparams: Any) -> None:
        super().__init__(context, **hparams)
        self.pair = deepest_pair(self.pairs, "crd")
        dim = self.hparams["feat_dim"]
        size = self.hparams["queue_size"]
        if size < 1:
            raise ConfigError(f"method 'crd': queue_size must be >= 1, got {size}")
        self.embed_student = nn.Linear(self.pair.student_shape[0], dim)
        self.embed_teacher = nn.Linear(self.pair.teacher_shape[0], dim)
        self.register_buffer("queue_student", torch.zeros(size, dim), persistent=False)
        self.register_buffer("queue_teacher", torch.zeros(size, dim), persistent=False)
        self.register_buffer("queue_labels", torch.full((size,), -1, dtype=torch.long),
                             persistent=False)
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("queue_next", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("log_z", torch.full((2,), math.nan), persistent=False)

    def embed(self, step: StepOutputs) -> tuple[Tensor, Tensor]:
        teacher, student = pair_features(step, self.pair)
        s = F.normalize(self.embed_student(pooled(student)), dim=1)
        t = F.normalize(self.embed_teacher(pooled(teacher.detach())), dim=1)
        return s, t

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        s, t = self.embed(step)
        labels = step.targets.to(s.device)
        filled = int(self.queue_filled)
        # Candidates: the current batch (other examples) then the queue; same label: excluded.
        neg_t = torch.cat([t, self.queue_teacher[:filled]])
        neg_s = torch.cat([s, self.queue_student[:filled]])
        cand_labels = torch.cat([labels, self.queue_labels[:filled]])
        valid = labels.unsqueeze(1) != cand_labels.unsqueeze(0)
        tau = self.hparams["temperature"]
        if torch.isnan(self.log_z).any():
            self.log_z[0] = mean_exp_log(s, t, neg_t, valid, tau)
            self.log_z[1] = mean_exp_log(t, s, neg_s, valid, tau)
        student_anchor = nce_loss(s, t, neg_t, valid, tau, self.log_z[0])
        teacher_anchor = nce_loss(t, s, neg_s, valid, tau, self.log_z[1])
        if self.training:
            self._enqueue(s.detach(), t.detach(), labels)
        weight = self.hparams["weight"] * self.pair.weight
        return {"crd/student": weight * student_anchor, "crd/teacher": weight * teacher_anchor}

    @torch.no_grad()
    def _enqueue(self, s: Tensor, t: Tensor, labels: Tensor) -> None:
        size = self.queue_student.shape[0]
        n = min(len(s), size)
        s, t, labels = s[-n:], t[-n:], labels[-n:]
        slots = (int(self.queue_next) + torch.arange(n, device=s.device)) % size
        self.queue_student[slots] = s
        self.queue_teacher[slots] = t
        self.queue_labels[slots] = labels
        self.queue_next.fill_((int(self.queue_next) + n) % size)
        self.queue_filled.fill_(min(int(self.queue_filled) + n, size))
