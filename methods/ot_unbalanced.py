"""Unbalanced optimal transport between teacher and student neurons (KL marginal relaxation).

Same neurons and costs as ``ot`` (:mod:`.ot`), but neurons need not all be matched: mass may be
created or destroyed at a price ``ρ`` per unit of KL divergence from the uniform marginals
(Chizat, Peyré, Schmitzer & Vialard 2018):

    UOT(a, b) = min_{P ≥ 0} <P, C> + ε·KL(P || a⊗b) + ρ·KL(P1 || a) + ρ·KL(Pᵀ1 || b)

with the generalized ``KL(p || q) = Σ p log(p/q) − p + q``. A teacher neuron far from every
student neuron (or the reverse) then costs at most about ``ρ`` instead of its distance to the
nearest one, so the regularizer ignores neurons without a counterpart. ``ρ`` and ``ε`` are
relative to the mean cost (scale-free, as ``ot``'s ``epsilon``); ``ρ → ∞`` recovers the balanced
problem. Solvers, from POT without gradient: ``sinkhorn`` = ``sinkhorn_unbalanced`` with the
translation-invariant iterations of Séjourné et al. (same optimum as generalized Sinkhorn,
far fewer iterations for large ``ρ``), rerun in the log domain when POT's kernel
``exp(−C/ε)`` underflows (a neuron farther than ~700 ε from every other one: POT would return
a meaningless plan); ``mm`` = ``mm_unbalanced`` (majorization–minimization, no entropy, ``ε``
unused; slower, and with the same underflow limit at ``C > ~1400 ρ``).

The loss is the plan's unbalanced transport cost ``<P, C> + ρ·(KL(P1 || a) + KL(Pᵀ1 || b))``
(the entropy excluded, as ``ot`` reports ``<P, C>`` for a Sinkhorn plan); with the plan a
constant its gradient is ``P``, the envelope theorem's for UOT. The defaults (ρ = 1 mean cost,
ε = 1e-2) are not from a paper: ρ = 1 lets a neuron go unmatched when its cheapest match costs
more than about the average pair.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from otbench.errors import ConfigError

from .base import (
    FEATURE_READS,
    HyperParam,
    LayerPair,
    StepOutputs,
    TransferContext,
    TransferMethod,
    per_pair_terms,
    register_method,
)
from .ot import (
    OTSettings,
    OTSolverWarning,
    check_ot_pairs,
    neuron_costs,
    neuron_hyperparams,
)

UNBALANCED_SOLVERS = ("sinkhorn", "mm")


def log_translation_invariant(cost: Tensor, rho: float, epsilon: float, max_iter: int = 10_000,
                              tol: float = 1e-9) -> tuple[Tensor, bool]:
    """POT's translation-invariant UOT iterations (KL reference ``a⊗b``, ``ρ`` on both sides)
    in the log domain, on the cost's device: the fallback where POT's kernel ``exp(−C/ε)``
    underflows (a neuron farther than ~700 ε from all others). Returns (plan, converged)."""
    n_t, n_s = cost.shape
    log_a = torch.full((n_t,), -math.log(n_t), dtype=cost.dtype, device=cost.device)
    log_b = torch.full((n_s,), -math.log(n_s), dtype=cost.dtype, device=cost.device)
    fi, k_rho = rho / (rho + epsilon), rho / (2 * (epsilon + rho))
    xi_rho, ratio, shift = rho / (epsilon + 2 * rho), epsilon / rho, rho / (2 * epsilon)
    log_k = log_a[:, None] + log_b[None, :] - cost / epsilon
    lse = torch.logsumexp
    lu_, lv_ = torch.zeros_like(log_a), torch.zeros_like(log_b)
    lu, lv, err = lu_, lv_, math.inf
    for _ in range(max_iter):
        lu_hat = fi * (log_a - lse(log_k + lv_[None, :], 1)) + k_rho * lse(log_b + ratio * lv_, 0)
        lu_ = lu_hat - xi_rho * lse(log_a - ratio * lu_hat, 0)
        lv_hat = fi * (log_b - lse(log_k + lu_[:, None], 0)) + k_rho * lse(log_a - ratio * lu_, 0)
        lv_ = lv_hat - xi_rho * lse(log_b - ratio * lv_hat, 0)
        lt = shift * (lse(log_a - ratio * lu_, 0) - lse(log_b - ratio * lv_, 0))
        new_u, new_v = lu_ + lt, lv_ - lt
        err = max(float((new_u - lu).abs().max()), float((new_v - lv).abs().max()))
        lu, lv = new_u, new_v
        if err < tol:
            break
    return (log_k + lu[:, None] + lv[None, :]).exp(), err < tol


def unbalanced_plan(cost: Tensor, rho: float, epsilon: float, solver: str = "sinkhorn",
                    max_iter: int = 10_000, tol: float = 1e-9) -> Tensor:
    """The UOT plan (float64, no gradient); ``rho`` and ``epsilon`` absolute (not relative).

    ``sinkhorn`` runs POT's translation-invariant solver and, where its kernel underflows,
    the same iterations in the log domain (:func:`log_translation_invariant`).
    """
    import ot  # POT only once a plan is solved (see ot._exact_plan)

    cost = cost.detach().to(torch.float64)
    cost64 = cost.cpu().numpy()
    n_t, n_s = cost64.shape
    a, b = np.full(n_t, 1.0 / n_t), np.full(n_s, 1.0 / n_s)
    if solver not in UNBALANCED_SOLVERS:
        raise ConfigError(f"unbalanced solver {solver!r} is not one of "
                          f"{list(UNBALANCED_SOLVERS)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if solver == "sinkhorn":
            plan, log = ot.unbalanced.sinkhorn_unbalanced(
                a, b, cost64, epsilon, rho, method="sinkhorn_translation_invariant",
                reg_type="kl", numItermax=max_iter, stopThr=tol, log=True)
            converged = bool(log["err"]) and log["err"][-1] <= tol
        else:
            # (its log keeps every iterate: not asked for; MM decreases the objective
            # monotonically and stops on a small step, so there is no error to test)
            plan = ot.unbalanced.mm_unbalanced(a, b, cost64, rho, div="kl",
                                               numItermax=max_iter, stopThr=tol)
            converged = True
    problems = [str(w.message) for w in caught]
    if solver == "sinkhorn" and (problems or not np.isfinite(plan).all()):
        result, converged = log_translation_invariant(cost, rho, epsilon, max_iter, tol)
        problems = []
    else:
        result = torch.from_numpy(plan).to(cost.device)
    if problems or not converged or not torch.isfinite(result).all():
        detail = "; ".join(problems) or f"not converged in {max_iter} iterations"
        warnings.warn(f"unbalanced OT ({solver}) on a {n_t}×{n_s} cost: {detail}; raise "
                      "epsilon or rho", OTSolverWarning, stacklevel=3)
    return result


def _generalized_kl(p: Tensor, q: float) -> Tensor:
    """``Σ p log(p/q) − p + q`` against a constant ``q`` (0 log 0 = 0)."""
    return (torch.xlogy(p, p / q) - p + q).sum()


def unbalanced_cost(cost: Tensor, rho: float = 1.0, epsilon: float = 1e-2,
                    solver: str = "sinkhorn", max_iter: int = 10_000,
                    tol: float = 1e-9) -> Tensor:
    """``<P, C> + ρ·(KL(P1 || a) + KL(Pᵀ1 || b))`` at the UOT plan; ``rho`` and ``epsilon``
    relative to the mean cost. Differentiable in ``cost`` (gradient ``P``)."""
    if not torch.isfinite(cost).all():  # keep the value non-finite, so training names the term
        return cost.sum()
    n_t, n_s = cost.shape
    scale = max(float(cost.detach().mean()), 1e-12)
    plan = unbalanced_plan(cost, rho * scale, epsilon * scale, solver, max_iter, tol)
    marginals = _generalized_kl(plan.sum(1), 1.0 / n_t) + _generalized_kl(plan.sum(0), 1.0 / n_s)
    return (plan.to(cost.dtype) * cost).sum() + rho * scale * marginals.to(cost.dtype)


@register_method("ot-unbalanced")
class UnbalancedOTTransfer(TransferMethod):
    """λ · Σ_layers w_l · UOT(teacher neurons, student neurons) with KL-relaxed marginals."""

    summary = "unbalanced OT (KL-relaxed marginals) between teacher and student neurons"
    reference = ("Chizat, Peyré, Schmitzer & Vialard 2018; Séjourné et al. (POT "
                 "sinkhorn_unbalanced); variant of Li et al. 2021")
    reads = FEATURE_READS
    needs_layer_pairs = True
    hyperparams = (
        HyperParam("weight", "float", 0.1, 1e-4, 10.0, log=True,
                   help="λ, the weight of the summed regularizer (as ot)",
                   source="ours: as ot"),
        HyperParam("rho", "float", 1.0, 1e-2, 100.0, log=True,
                   help="ρ, price of unmatched mass, relative to the mean cost (∞: balanced)",
                   source="ours: unmatched when the cheapest match costs more than the mean"),
        HyperParam("epsilon", "float", 1e-2, 1e-3, 1.0, log=True, searchable=False,
                   help="entropic ε relative to the mean cost (solver sinkhorn)",
                   source="ours: as ot's epsilon"),
        HyperParam("solver", "categorical", "sinkhorn", choices=UNBALANCED_SOLVERS,
                   searchable=False, help="sinkhorn (entropic, fast) or mm (no entropy)",
                   source="POT's unbalanced solvers"),
        *neuron_hyperparams(),
    )

    def __init__(self, context: TransferContext, **hparams: Any) -> None:
        super().__init__(context, **hparams)
        hp = dict(self.hparams)
        self.weight = hp.pop("weight")
        self.rho = hp.pop("rho")
        self.solver = hp.pop("solver")
        if not self.rho > 0:
            raise ConfigError(f"method {self.name!r}: rho must be > 0, got {self.rho}")
        self.settings = OTSettings(**hp)
        check_ot_pairs(self.name, self.pairs, self.settings.spatial)

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        return per_pair_terms(self.name, self.pairs, step, self.weight, self.divergence)

    def divergence(self, pair: LayerPair, teacher: Tensor, student: Tensor) -> Tensor:
        cost = neuron_costs(teacher, student, self.settings, pair.describe())
        return unbalanced_cost(cost, self.rho, self.settings.epsilon, self.solver)
