"""Representation similarity between two layers, usable outside training.

Pure tensor math, shared by the ``cka`` method, the per-epoch diagnostics and
``otbench analyze``: linear CKA (Kornblith et al. 2019) in its biased and unbiased (HSIC of
Song et al. 2012) forms, the identity-matching distance, and statistics of a transport plan.
"""

from __future__ import annotations

import torch
from torch import Tensor

from otbench.errors import ConfigError


def _examples(features: Tensor) -> Tensor:
    """``(B, ...)`` -> ``(B, p)``: one row per example."""
    return features.reshape(features.shape[0], -1)


def _gram(features: Tensor) -> Tensor:
    x = _examples(features)
    return x @ x.t()


def _center(gram: Tensor) -> Tensor:
    """H K H with H = I − 11ᵀ/n: the Gram matrix of column-centered features."""
    return gram - gram.mean(0, keepdim=True) - gram.mean(1, keepdim=True) + gram.mean()


def centered_gram(features: Tensor) -> Tensor:
    """``K_c``: the example-by-example Gram matrix of centered ``(B, ...)`` features. A fixed
    side (a frozen teacher on a fixed probe) computes it once for many CKA values."""
    return _center(_gram(features))


def _check_same_examples(k: Tensor, l_: Tensor) -> None:
    """Both Gram matrices are over one batch of examples, or CKA means nothing."""
    if k.shape != l_.shape:
        raise ConfigError(f"CKA needs the same examples on both sides, got batches of "
                          f"{k.shape[0]} and {l_.shape[0]}")


def cka_of_grams(k: Tensor, l_: Tensor) -> Tensor:
    """Linear CKA from two centered Gram matrices over the same examples."""
    _check_same_examples(k, l_)
    return (k * l_).sum() / ((k * k).sum().sqrt() * (l_ * l_).sum().sqrt()).clamp_min(1e-12)


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA between ``(B, ...)`` feature batches, in [0, 1]; widths may differ.

    ``tr(K_c L_c) / sqrt(tr(K_c K_c) tr(L_c L_c))`` with Gram matrices of centered features,
    invariant to orthogonal transforms and isotropic scaling of either side.
    """
    return cka_of_grams(centered_gram(x), centered_gram(y))


def unbiased_hsic(k: Tensor, l_: Tensor) -> Tensor:
    """Song et al.'s unbiased HSIC estimator from two ``(n, n)`` Gram matrices, n > 3."""
    n = k.shape[0]
    if n <= 3:
        raise ConfigError(f"unbiased HSIC needs more than 3 examples, got {n}")
    k = k - torch.diag(torch.diagonal(k))
    l_ = l_ - torch.diag(torch.diagonal(l_))
    ones = torch.ones(n, 1, dtype=k.dtype, device=k.device)
    trace = (k * l_).sum()
    sums = (ones.t() @ k @ ones) * (ones.t() @ l_ @ ones) / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (ones.t() @ k @ l_ @ ones)
    return ((trace + sums - cross) / (n * (n - 3))).squeeze()


def unbiased_cka(x: Tensor, y: Tensor) -> Tensor:
    """CKA from the unbiased HSIC: less biased upward for small batches (needs B > 3)."""
    k, l_ = _gram(x), _gram(y)
    _check_same_examples(k, l_)
    denominator = (unbiased_hsic(k, k) * unbiased_hsic(l_, l_)).clamp_min(1e-24).sqrt()
    return unbiased_hsic(k, l_) / denominator


def plan_matching(plan: Tensor) -> Tensor:
    """For each student neuron (column), the teacher neuron carrying most of its mass."""
    return plan.argmax(dim=0)


def column_entropy(plan: Tensor) -> Tensor:
    """Mean entropy (nats) of each student neuron's mass over teacher neurons.

    0 when every student neuron is matched to one teacher neuron; log(n_t) when its mass is
    spread evenly: how much neurons are split or merged by the plan.
    """
    columns = plan / plan.sum(0, keepdim=True).clamp_min(1e-30)
    logs = torch.where(columns > 0, columns.clamp_min(1e-30).log(), torch.zeros_like(columns))
    return -(columns * logs).sum(0).mean()


def matching_stability(previous: Tensor, current: Tensor) -> float:
    """Fraction of student neurons whose matched teacher neuron changed (0 = stable)."""
    if previous.shape != current.shape:
        raise ConfigError(f"matchings differ in width: {tuple(previous.shape)} vs "
                          f"{tuple(current.shape)}")
    return float((previous != current).float().mean())


def identity_distance(teacher_features: Tensor, student_features: Tensor,
                      **settings: object) -> Tensor:
    """``(1/n) Σ_i C_ii``: neuron i matched to neuron i, on the same cost as ``ot_distance``.

    Identity minus OT is how much of the distance a permutation of neurons explains.
    """
    from .ot import OTSettings, neuron_costs

    if teacher_features.shape[1] != student_features.shape[1]:
        raise ConfigError(f"the identity matching needs equal widths, got "
                          f"{teacher_features.shape[1]} teacher and {student_features.shape[1]} "
                          "student neurons")
    config = OTSettings.from_kwargs(dict(settings))
    return neuron_costs(teacher_features, student_features, config).diagonal().mean()
