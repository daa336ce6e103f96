"""Relational knowledge distillation (Park, Kim, Lu & Cho 2019), distance- and angle-wise.

On the deepest pair's globally average-pooled embeddings (``B × C``, any widths):

* distance: ``ψ_D(i, j) = ||e_i − e_j|| / μ`` with ``μ`` the mean over distinct pairs; the loss
  is the Huber (smooth-L1, δ = 1) loss between teacher and student ``ψ_D``, averaged over all
  ``B²`` entries;
* angle: ``ψ_A(i, j, k) = <(e_i − e_j)/||e_i − e_j||, (e_k − e_j)/||e_k − e_j||>``, the cosine
  at ``j`` of the triangle ``(i, j, k)``; Huber loss averaged over all ``B³`` entries
  (degenerate triangles, with a repeated index, count as cosine 0 on both sides).

Total: ``w_d · L_D + w_a · L_A``. The defaults ``w_d = 25, w_a = 50`` are those of ``RKDLoss`` in
the CRD benchmark code (Tian et al. 2020, RepDistiller), the usual reference for RKD on image
classification. The teacher side is a constant; the averages over ``B²`` / ``B³`` entries
(repeated indices included) follow the authors' code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
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


def pairwise_distances(embeddings: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances ``(B, B)``, zero on the diagonal, safe to differentiate."""
    sq = embeddings.pow(2).sum(1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * embeddings @ embeddings.t()).clamp_min(eps)
    off_diagonal = ~torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
    return d2.sqrt() * off_diagonal


def distance_potential(embeddings: Tensor) -> Tensor:
    """``ψ_D``: pairwise distances divided by their mean over distinct pairs."""
    d = pairwise_distances(embeddings)
    return d / d[d > 0].mean()


def angle_potential(embeddings: Tensor) -> Tensor:
    """``ψ_A`` as a ``(B, B, B)`` tensor: ``[j, i, k]`` is the cosine at ``j`` of ``(i, j, k)``.

    Entry ``[j, i, k] = <n(e_i − e_j), n(e_k − e_j)>`` with ``n`` the unit vector (0 for 0).
    """
    directions = F.normalize(embeddings.unsqueeze(0) - embeddings.unsqueeze(1), p=2, dim=2)
    return directions @ directions.transpose(1, 2)


def rkd_losses(teacher: Tensor, student: Tensor) -> tuple[Tensor, Tensor]:
    """Distance- and angle-wise Huber losses between ``(B, ·)`` embeddings (teacher constant)."""
    teacher = teacher.detach()
    with torch.no_grad():
        t_distance, t_angle = distance_potential(teacher), angle_potential(teacher)
    distance = F.smooth_l1_loss(distance_potential(student), t_distance)
    angle = F.smooth_l1_loss(angle_potential(student), t_angle)
    return distance, angle


@register_method("rkd")
class RelationalKD(TransferMethod):
    """Matches the geometry of the batch (distances, angles), not the features; any widths."""

    summary = "relational KD: pairwise distances and triplet angles (Park et al. 2019)"
    reference = "Park et al. 2019; RepDistiller distiller_zoo/RKD.py (RKDLoss), -b 1"
    reads = FEATURE_READS
    layers = "last"
    needs_layer_pairs = True
    hyperparams = (
        HyperParam("distance_weight", "float", 25.0, 0.1, 1000.0, log=True,
                   help="w_d, weight of the distance-wise loss",
                   source="RepDistiller RKDLoss w_d = 25; range: ours"),
        HyperParam("angle_weight", "float", 50.0, 0.1, 1000.0, log=True,
                   help="w_a, weight of the angle-wise loss",
                   source="RepDistiller RKDLoss w_a = 50; range: ours"),
    )

    def __init__(self, context: TransferContext, **hparams: Any) -> None:
        super().__init__(context, **hparams)
        self.pair = deepest_pair(self.pairs, "rkd")

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        teacher, student = pair_features(step, self.pair)
        distance, angle = rkd_losses(pooled(teacher), pooled(student))
        w = self.pair.weight
        return {"rkd/distance": self.hparams["distance_weight"] * w * distance,
                "rkd/angle": self.hparams["angle_weight"] * w * angle}
