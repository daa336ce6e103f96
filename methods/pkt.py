"""Probabilistic knowledge transfer (Passalis & Tefas 2018).

On the deepest pair's globally average-pooled embeddings, each side's cosine-similarity kernel
``K_ij = cos(e_i, e_j)`` is shifted to ``[0, 1]`` (``(K + 1) / 2``) and normalized row-wise into
conditional probabilities ``p_{j|i}``; the loss is ``KL(teacher || student)``,
``mean_{i,j} p^T_{j|i} · log((p^T_{j|i} + ε) / (p^S_{j|i} + ε))`` with ``ε = 1e-7``.

As in the authors' code (``cosine_similarity_loss``, reused by the CRD benchmark), ``j = i`` is
kept and the divergence is averaged over all ``B²`` entries (so it is the per-row KL divided by
``B``). The default weight 30000 is the CRD benchmark's for PKT (``-b 30000``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

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

EPS = 1e-7


def conditional_probabilities(embeddings: Tensor, eps: float = EPS) -> Tensor:
    """``(B, C)`` -> ``(B, B)``: row ``i`` is ``p_{·|i}`` from the shifted cosine kernel."""
    unit = embeddings / (embeddings.norm(dim=1, keepdim=True) + eps)
    kernel = (unit @ unit.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(teacher: Tensor, student: Tensor, eps: float = EPS) -> Tensor:
    """Mean over the ``B²`` entries of ``p_T · log((p_T + ε) / (p_S + ε))`` (teacher constant)."""
    p_teacher = conditional_probabilities(teacher.detach(), eps)
    p_student = conditional_probabilities(student, eps)
    return (p_teacher * ((p_teacher + eps) / (p_student + eps)).log()).mean()


@register_method("pkt")
class ProbabilisticKT(TransferMethod):
    """Matches the distribution of pairwise cosine similarities in the batch; any widths."""

    summary = "probabilistic KT: KL between cosine-kernel probabilities (Passalis & Tefas 2018)"
    reference = "Passalis & Tefas 2018; RepDistiller distiller_zoo/PKT.py"
    reads = FEATURE_READS
    layers = "last"
    needs_layer_pairs = True
    hyperparams = (
        HyperParam("weight", "float", 30000.0, 100.0, 1e6, log=True,
                   help="weight of the divergence",
                   source="RepDistiller scripts/run_cifar_distill.sh -b 30000; range: ours"),
    )

    def __init__(self, context: TransferContext, **hparams: Any) -> None:
        super().__init__(context, **hparams)
        self.pair = deepest_pair(self.pairs, "pkt")

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        teacher, student = pair_features(step, self.pair)
        loss = pkt_loss(pooled(teacher), pooled(student))
        return {f"pkt/{self.pair.key}": self.hparams["weight"] * self.pair.weight * loss}
