"""DELTA (Li, Xiong, Wang, Huan, Liu, Xu, Chen & Dou 2019): feature maps with channel attention.

Instead of pulling the weights toward the starting point (L2-SP), DELTA pulls the *behaviour*:
the student's feature maps toward those of the starting model on the same inputs, channel by
channel, each channel weighted by how much the starting model relies on it; the new head gets a
plain L2 penalty. In scenario ``transfer`` the starting model is the teacher, so per layer pair
``l`` with ``C`` channels, ``H × W`` positions and channel weights ``w_lc`` (``Σ_c w_lc = 1``):

    Ω = α/2 · Σ_l Σ_c C·w_lc · mean_b ||FM_c(student, x_b) − FM_c(start, x_b)||² / (H·W)
      + β/2 · ||w_head||²

The ``C·w_lc`` and ``/(H·W)`` normalizations and the ½ follow the authors' code, so uniform
weights (``w = 1/C``) give the plain feature-map distance, ``Σ_c mean ||ΔFM_c||²/(H·W)``.

Departures from the paper, and why:

* Batch mean. The paper writes Ω per example inside the empirical risk; the authors' code sums
  it over the batch while averaging the cross-entropy, which makes its α batch-size dependent
  (its α = 0.01 at batch 64 is α = 0.64 here). We average over the batch, as the paper's formula
  does, so the default α = 0.64 is the authors' 0.01 at their batch of 64; β = 0.01 is theirs
  (the head's penalty does not depend on the batch).
* Weight decay. The optimizer puts none on the transferred weights, which DELTA keeps near
  the start (weight decay would pull them toward 0; the Transfer-Learning-Library example
  runs with weight decay 0); the rest keeps the run's weight decay.
* Channel attention. The paper scores channel ``j`` by the loss increase when it is zeroed,
  ``L(z(x, w*∖j), y) − L(z(x, w*), y)``, measured on the target data with the starting model
  (whose new classifier was first trained on the target task), then z-scores the scores within
  a layer and takes ``softmax(z / 5)`` (authors' code). A method here sees neither inputs nor a
  data loader, and in ``transfer`` the student's head is untrained at the start, so this
  measurement is impossible. ``attention='energy'`` (default) scores each channel by its mean
  squared activation ``mean_{b,h,w} FM_c(start)²`` on the first training batch (the starting
  model on target data, as in the paper) and then applies the authors' normalization,
  ``softmax(zscore(score) / 5)``; activation energy is a standard proxy for channel importance
  (pruning criteria) and, like the loss increase, is measured with the starting model only. The
  temperature 5 keeps the weights mild (within about ×2 of uniform for |z| ≤ 2), so the proxy
  changes the loss little. ``attention='uniform'`` gives every channel ``1/C`` (the paper's
  attention-free "feature map" variant). The weights are fixed after the first batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from otbench.errors import ConfigError

from .base import (
    HEAD_BETA,
    HyperParam,
    LayerPair,
    StepOutputs,
    TransferContext,
    TransferMethod,
    head_penalty,
    pair_features,
    register_method,
)

ATTENTION = ("energy", "uniform")

#: The authors' softmax temperature over z-scored channel scores.
ATTENTION_TEMPERATURE = 5.0


def channel_maps(features: Tensor) -> Tensor:
    """``(B, C, H, W)`` or ``(B, C)`` -> ``(B, C, H·W)``."""
    if features.dim() not in (2, 4):
        raise ConfigError(f"features must be (B, C) or (B, C, H, W), got shape "
                          f"{tuple(features.shape)}")
    return features.reshape(features.shape[0], features.shape[1], -1)


def energy_attention(start_features: Tensor,
                     temperature: float = ATTENTION_TEMPERATURE) -> Tensor:
    """``softmax(zscore(mean squared activation per channel) / T)``: weights summing to 1."""
    score = channel_maps(start_features.detach()).pow(2).mean(dim=(0, 2))
    spread = score.std(unbiased=False)
    z = (score - score.mean()) / spread if spread > 0 else torch.zeros_like(score)
    return torch.softmax(z / temperature, dim=0)


def delta_feature_loss(student: Tensor, start: Tensor, weights: Tensor) -> Tensor:
    """``Σ_c C·w_c · mean_b ||ΔFM_c||² / (H·W)`` for one layer (the starting side constant)."""
    diff = channel_maps(student) - channel_maps(start.detach())
    per_channel = diff.pow(2).mean(dim=(0, 2))  # mean over batch and positions
    return (weights.shape[0] * weights * per_channel).sum()


@register_method("delta")
class DELTA(TransferMethod):
    """Keeps the student's feature maps near the starting model's, channel-weighted."""

    summary = "feature maps toward the starting model's, channel attention (Li et al. 2019)"
    reference = ("Li et al. 2019; Transfer-Learning-Library tllib/regularization/delta.py, "
                 "examples/task_adaptation/image_classification/delta.py")
    reads = frozenset({"student_features", "teacher_features", "student_weights"})
    needs_same_architecture = True
    needs_layer_pairs = True
    hyperparams = (
        HyperParam("alpha", "float", 0.64, 1e-2, 64.0, log=True,
                   help="α, weight of the behavioural (feature-map) term (batch mean)",
                   source="the authors' α = 0.01 summed over a batch of 64 (tllib "
                          "--trade-off-backbone 0.01) = 0.64 as a batch mean; range: ours, "
                          "about two decades either side"),
        HEAD_BETA,
        HyperParam("attention", "categorical", "energy", choices=ATTENTION, searchable=False,
                   help="channel weights: energy on the first batch (proxy for the paper's "
                        "loss increase), or uniform",
                   source="ours: a proxy for the paper's loss increase (see the docstring)"),
    )

    def __init__(self, context: TransferContext, **hparams: Any) -> None:
        super().__init__(context, **hparams)
        for pair in self.pairs:
            if tuple(pair.teacher_shape) != tuple(pair.student_shape):
                raise ConfigError(f"method 'delta' compares the student's feature maps with "
                                  f"the starting model's at the same layer; shapes differ for "
                                  f"{pair.describe()}")
        self.student = [context.student]  # a list: not registered as a submodule
        self.head = tuple(sorted(context.head))
        for pair in self.pairs:
            self.register_buffer(_buffer_name(pair), torch.zeros(pair.student_shape[0]),
                                 persistent=False)
        self.register_buffer("attention_ready", torch.tensor(False), persistent=False)

    def anchored_parameters(self) -> frozenset[str]:
        return frozenset(n for n, _ in self.student[0].named_parameters()
                         if n not in self.head)

    def channel_weights(self, pair: LayerPair) -> Tensor:
        return getattr(self, _buffer_name(pair))

    def _set_attention(self, step: StepOutputs) -> None:
        """Fix the channel weights from the first batch the method sees."""
        for pair in self.pairs:
            weights = self.channel_weights(pair)
            if self.hparams["attention"] == "energy":
                start, _ = pair_features(step, pair)
                weights.copy_(energy_attention(start))
            else:
                weights.fill_(1.0 / len(weights))
        self.attention_ready.fill_(True)

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        if not bool(self.attention_ready):
            self._set_attention(step)
        terms = {}
        for pair in self.pairs:
            start, student = pair_features(step, pair)
            loss = delta_feature_loss(student, start, self.channel_weights(pair))
            terms[f"delta/{pair.key}"] = self.hparams["alpha"] / 2 * pair.weight * loss
        params = dict(self.student[0].named_parameters())
        terms["delta/head"] = head_penalty(self.hparams["beta"], params, self.head,
                                           step.student_logits.device)
        return terms


def _buffer_name(pair: LayerPair) -> str:
    return "attention__" + pair.key.replace(".", "__")
