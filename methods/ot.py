"""The optimal-transport regularizer of Li, Grandvalet, Flamary, Courty & Dou (2021).

Each channel of a layer is a neuron, sampled by its activations over a batch (and space):
teacher ``T ∈ R^{n_t × d}``, student ``S ∈ R^{n_s × d}``. A layer is the uniform measure on its
neurons and the regularizer is ``Ω = min_{P ∈ Π(1/n_t, 1/n_s)} <P, C>`` with
``C_ij = ||T_i − S_j||²``. The plan is solved without gradient and the loss is ``<P*, C>``: by
the envelope theorem that is the gradient of Ω, and it reaches the student only.

Speed: the solvers see a double-centred copy of the cost (same optimal plans, faster to solve),
the plans of a step's layer pairs are solved side by side, the loss is summed over the plan's
support (:func:`plan_cost`), and :class:`OTTransfer` can keep a plan for ``plan_every``
training steps and solve it one step ahead on a background thread (``plan_lag``; see its
docstring).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from otbench.errors import ConfigError

from .base import (
    FEATURE_READS,
    HyperParam,
    LayerPair,
    StepOutputs,
    TransferContext,
    TransferMethod,
    flatten_neurons,
    pair_features,
    pool_to_smaller,
    register_method,
)

SOLVERS = ("auto", "exact", "assignment", "sinkhorn")
NORMALIZATIONS = ("none", "center", "standardize", "unit")
COST_SCALES = ("mean", "sum")
SPATIAL_MODES = ("pool", "error")

#: Network-simplex iteration cap. POT's default (1e5) stops short of optimal well before
#: 2048 × 2048 neurons; this is a cap, not a cost: the solver stops at the optimum.
EMD_MAX_ITER = 100_000_000


class OTSolverWarning(UserWarning):
    """An OT solver stopped before it reached its optimum or tolerance."""


@dataclass(frozen=True)
class OTSettings:
    """How Ω is computed. ``epsilon`` is relative to the mean cost, so it is scale-free."""

    solver: Literal["auto", "exact", "assignment", "sinkhorn"] = "auto"
    normalize: Literal["none", "center", "standardize", "unit"] = "none"
    cost_scale: Literal["mean", "sum"] = "mean"
    spatial: Literal["pool", "error"] = "pool"
    epsilon: float = 1e-2
    sinkhorn_max_iter: int = 10_000
    sinkhorn_tol: float = 1e-6

    def __post_init__(self) -> None:
        for name, valid in (("solver", SOLVERS), ("normalize", NORMALIZATIONS),
                            ("cost_scale", COST_SCALES), ("spatial", SPATIAL_MODES)):
            if getattr(self, name) not in valid:
                raise ConfigError(f"OT setting {name}={getattr(self, name)!r} is not one of "
                                  f"{list(valid)}")
        if not self.epsilon > 0:
            raise ConfigError(f"OT setting epsilon must be > 0, got {self.epsilon}")

    @classmethod
    def from_kwargs(cls, settings: dict[str, Any]) -> OTSettings:
        valid = {f.name for f in fields(cls)}
        unknown = set(settings) - valid
        if unknown:
            raise ConfigError(f"unknown OT setting(s) {sorted(unknown)}; valid: {sorted(valid)}")
        return cls(**settings)


def match_spatial(teacher: Tensor, student: Tensor, spatial: str,
                  where: str = "") -> tuple[Tensor, Tensor]:
    """Bring both feature maps to one batch and spatial size (pool the larger), or explain."""
    where = where or (f"teacher features {tuple(teacher.shape)} / student features "
                      f"{tuple(student.shape)}")
    if teacher.shape[0] != student.shape[0]:
        raise ConfigError(f"OT needs the same batch on both sides: {where}")
    if teacher.dim() != student.dim() or teacher.dim() not in (2, 4):
        raise ConfigError(f"OT cannot match a {teacher.dim()}-d and a {student.dim()}-d layer: "
                          f"{where}. Pair layers of the same kind (both convolutional or both "
                          "fully connected)")
    if teacher.dim() == 2 or teacher.shape[2:] == student.shape[2:]:
        return teacher, student
    if spatial == "error":
        raise ConfigError(f"OT layers differ in spatial size: {where}. Pair layers of equal "
                          "size or set spatial='pool'")
    return pool_to_smaller(teacher, student)


def normalize_neurons(neurons: Tensor, mode: str) -> Tensor:
    """Per-neuron normalization of a ``(n, d)`` matrix; makes Ω blind to scale or offset."""
    if mode == "none":
        return neurons
    if mode == "unit":
        return F.normalize(neurons, dim=1)
    centered = neurons - neurons.mean(dim=1, keepdim=True)
    if mode == "center":
        return centered
    return centered / centered.std(dim=1, keepdim=True).clamp_min(1e-8)


def cost_matrix(teacher: Tensor, student: Tensor, cost_scale: str = "mean",
                teacher_norms: Tensor | None = None) -> Tensor:
    """Squared distances ``||T_i − S_j||²`` in one matrix product; divided by d for 'mean'.
    ``teacher_norms``: the ``(n_t, 1)`` squared norms of the teacher's rows, when a fixed
    teacher side has them already."""
    if teacher_norms is None:
        teacher_norms = teacher.pow(2).sum(1, keepdim=True)
    sq = (teacher_norms + student.pow(2).sum(1).unsqueeze(0)
          - 2.0 * teacher @ student.t()).clamp_min(0.0)
    return sq / teacher.shape[1] if cost_scale == "mean" else sq


def uniform_weights(n: int) -> np.ndarray:
    """The uniform measure's weights on ``n`` neurons."""
    return np.full(n, 1.0 / n)


def solver_cost(cost: np.ndarray) -> np.ndarray:
    """The cost the exact solvers see: ``C`` double-centred, then shifted to be >= 0.

    With uniform marginals ``<P, u 1ᵀ + 1 vᵀ>`` is the same for every feasible plan, so
    removing row and column means changes Ω by a constant and the optimal plans not at all.
    It strips the ``||T_i||² + ||S_j||²`` offsets, which slow both exact solvers down on wide
    layers. The shift keeps POT's simplex on costs >= 0.
    """
    centred = cost - cost.mean(axis=1, keepdims=True) - cost.mean(axis=0, keepdims=True)
    return centred - centred.min()


def _exact_plan(cost: np.ndarray) -> np.ndarray:
    import ot  # POT (with the scikit-learn it loads) and scipy.optimize only once a plan is
    #            solved: listing or checking methods stays quick

    n_t, n_s = cost.shape
    plan, log = ot.emd(uniform_weights(n_t), uniform_weights(n_s), cost,
                       numItermax=EMD_MAX_ITER, log=True)
    if log.get("result_code", 1) != 1:
        warnings.warn(f"exact OT did not reach the optimum on a {n_t}×{n_s} cost: "
                      f"{log.get('warning')}", OTSolverWarning, stacklevel=3)
    return plan


def _assignment_plan(cost: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment  # see _exact_plan

    n_t, n_s = cost.shape
    if n_t != n_s:
        raise ConfigError(f"solver 'assignment' needs equal widths, got {n_t} teacher and "
                          f"{n_s} student neurons; use solver 'auto' or 'exact'")
    rows, cols = linear_sum_assignment(cost)
    plan = np.zeros_like(cost)
    plan[rows, cols] = 1.0 / n_t
    return plan


def _sinkhorn_plan(cost: np.ndarray, settings: OTSettings) -> np.ndarray:
    return sinkhorn_plan(cost, settings.epsilon * max(float(cost.mean()), 1e-12), settings)


def sinkhorn_plan(cost: np.ndarray, reg: float, settings: OTSettings) -> np.ndarray:
    """Log-domain Sinkhorn plan for uniform weights at absolute ``reg``, with an explicit
    marginal check that warns when it did not converge (POT's own warning is easy to miss)."""
    import ot  # see _exact_plan

    n_t, n_s = cost.shape
    a, b = uniform_weights(n_t), uniform_weights(n_s)
    plan = ot.sinkhorn(a, b, cost, reg, method="sinkhorn_log",
                       numItermax=settings.sinkhorn_max_iter,
                       stopThr=settings.sinkhorn_tol, warn=False)
    marginal_error = np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()
    if not np.isfinite(marginal_error) or marginal_error > 10 * settings.sinkhorn_tol:
        warnings.warn(f"Sinkhorn did not converge in {settings.sinkhorn_max_iter} iterations "
                      f"(marginal error {marginal_error:.2e} > tolerance "
                      f"{settings.sinkhorn_tol:.0e}); raise epsilon or sinkhorn_max_iter",
                      OTSolverWarning, stacklevel=4)
    return plan


def resolve_solver(solver: str, n_t: int, n_s: int) -> str:
    """'auto' picks the fastest exact solver: assignment for equal widths, else simplex."""
    if solver != "auto":
        return solver
    return "assignment" if n_t == n_s else "exact"


def transport_plan(cost: Tensor, settings: OTSettings) -> Tensor:
    """The optimal plan for a ``(n_t, n_s)`` cost, computed without gradient in float64."""
    cost64 = cost.detach().to("cpu", torch.float64).numpy()
    solver = resolve_solver(settings.solver, *cost64.shape)
    if not np.isfinite(cost64).all():
        # Diverged features: any feasible plan keeps the loss non-finite, so the training
        # loop reports which term went bad instead of the solver failing obscurely.
        plan = np.outer(uniform_weights(cost64.shape[0]), uniform_weights(cost64.shape[1]))
    elif solver == "exact":
        plan = _exact_plan(solver_cost(cost64))
    elif solver == "assignment":
        plan = _assignment_plan(solver_cost(cost64))
    else:
        plan = _sinkhorn_plan(cost64, settings)
    return torch.from_numpy(plan).to(device=cost.device, dtype=cost.dtype)


class _SupportCost(torch.autograd.Function):
    """``Σ P_ij ||T_i − S_j||²`` over the plan's nonzeros, with the gradients
    ``2(a_i T_i − (P S)_i)`` and ``2(b_j S_j − (Pᵀ T)_j)`` (``a``, ``b``: the plan's row and
    column sums) accumulated by ``index_add_``, which is deterministic on CPU, where
    autograd's backward of the gather is not on several threads."""

    @staticmethod
    def forward(ctx: Any, teacher: Tensor, student: Tensor, plan: Tensor, rows: Tensor,
                cols: Tensor) -> Tensor:
        weights = plan[rows, cols]
        ctx.save_for_backward(teacher, student, plan, rows, cols, weights)
        return (weights * (teacher[rows] - student[cols]).pow(2).sum(1)).sum()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None,
                                                  None]:
        teacher, student, plan, rows, cols, weights = ctx.saved_tensors
        grad_teacher = grad_student = None
        if ctx.needs_input_grad[0]:
            pulled = _pull(teacher, rows, student[cols] * weights[:, None])
            grad_teacher = 2 * grad * (plan.sum(1, keepdim=True) * teacher - pulled)
        if ctx.needs_input_grad[1]:
            pulled = _pull(student, cols, teacher[rows] * weights[:, None])
            grad_student = 2 * grad * (plan.sum(0).unsqueeze(1) * student - pulled)
        return grad_teacher, grad_student, None, None, None


def _pull(like: Tensor, index: Tensor, rows: Tensor) -> Tensor:
    """``out[k] = Σ_{m: index[m] = k} rows[m]``: a plain (parallel) copy when the indices
    are distinct, as in an assignment, else a deterministic ``index_add_``."""
    out = torch.zeros_like(like)
    if len(torch.unique(index)) == len(index):
        out[index] = rows
        return out
    return out.index_add_(0, index, rows)


def plan_cost(plan: Tensor, teacher: Tensor, student: Tensor, cost_scale: str = "mean") -> Tensor:
    """``<P, C>`` for neurons ``(n_t, d)`` and ``(n_s, d)``, differentiable in both.

    The exact solvers' plans are vertices of the transport polytope, with at most
    ``n_t + n_s − 1`` nonzeros: summing ``P_ij ||T_i − S_j||²`` over them costs
    ``O((n_t + n_s)·d)``, not the ``O(n_t·n_s·d)`` of the cost matrix, which then only the
    solver needs, without gradient (and not at all on steps that reuse a plan). A dense plan
    (Sinkhorn) goes through the matrix.
    """
    rows, cols = plan.detach().nonzero(as_tuple=True)
    if len(rows) > plan.shape[0] + plan.shape[1]:
        return (plan * cost_matrix(teacher, student, cost_scale)).sum()
    total = _SupportCost.apply(teacher, student, plan.detach(), rows, cols)
    return total / teacher.shape[1] if cost_scale == "mean" else total


def layer_neurons(features: Tensor, settings: OTSettings) -> Tensor:
    """One layer's neurons, ``(n, d)``, normalized as ``settings`` say (spatial sizes already
    matched)."""
    return normalize_neurons(flatten_neurons(features), settings.normalize)


def neuron_pair(teacher_features: Tensor, student_features: Tensor, settings: OTSettings,
                where: str = "") -> tuple[Tensor, Tensor]:
    """The two layers' neurons, ``(n_t, d)`` and ``(n_s, d)``, on one spatial size and
    normalized as ``settings`` say."""
    teacher, student = match_spatial(teacher_features, student_features, settings.spatial, where)
    return layer_neurons(teacher, settings), layer_neurons(student, settings)


def neuron_costs(teacher_features: Tensor, student_features: Tensor,
                 settings: OTSettings, where: str = "") -> Tensor:
    """The cost matrix between the neurons of two layers' features."""
    return cost_matrix(*neuron_pair(teacher_features, student_features, settings, where),
                       settings.cost_scale)


def solved_plans(neurons: Mapping[str, tuple[Tensor, Tensor]],
                 settings: OTSettings) -> dict[str, Tensor]:
    """Optimal plans for the neuron pairs of a step, from costs built without gradient and
    solved side by side on up to torch's number of CPU threads: POT's network simplex and
    scipy's assignment release the GIL, so a step waits for its slowest layer instead of the
    sum of all of them."""
    with torch.no_grad():
        costs = {key: cost_matrix(t, s, settings.cost_scale) for key, (t, s) in neurons.items()}
    threads = min(len(costs), torch.get_num_threads())
    if threads < 2:
        return {key: transport_plan(cost, settings) for key, cost in costs.items()}
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ot-solve") as pool:
        futures = {key: pool.submit(transport_plan, cost, settings)
                   for key, cost in costs.items()}
        return {key: future.result() for key, future in futures.items()}


class PlanPipeline:
    """Solves a step's plans on a background thread while the caller goes on with the step
    (its backward pass, the optimizer, the next forward), for use at a later step.

    The solver runs on the CPU whatever the device: on a GPU the device then never waits for
    it, and on a CPU it overlaps the solve with the step's own work. The neurons are
    detached, so the pending solve never holds the autograd graph.
    """

    def __init__(self, settings: OTSettings) -> None:
        self.settings = settings
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[dict[str, Tensor]] | None = None

    def submit(self, neurons: Mapping[str, tuple[Tensor, Tensor]]) -> None:
        """Start solving ``neurons``' plans; one solve is pending at a time."""
        assert self._pending is None, "collect the pending plans before submitting more"
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ot-plans")
        detached = {key: (t.detach(), s.detach()) for key, (t, s) in neurons.items()}
        self._pending = self._executor.submit(solved_plans, detached, self.settings)

    def collect(self) -> dict[str, Tensor] | None:
        """The pending solve's plans (waiting for them if need be), or None if none is."""
        if self._pending is None:
            return None
        pending, self._pending = self._pending, None
        return pending.result()


def ot_distance(teacher_features: Tensor, student_features: Tensor,
                **settings: Any) -> Tensor:
    """Ω between two layers' features, ``(B, C, H, W)`` or ``(B, C)``, differentiable in both.

    Keyword settings are the fields of :class:`OTSettings` (solver, normalize, cost_scale,
    spatial, epsilon...). Usable outside training, e.g. to compare two trained networks. The
    plan is a constant, so the gradient is the envelope theorem's.
    """
    config = OTSettings.from_kwargs(settings)
    teacher, student = neuron_pair(teacher_features, student_features, config)
    plan = solved_plans({"": (teacher, student)}, config)[""]
    return plan_cost(plan, teacher, student, config.cost_scale)


def check_pair_shapes(pair: LayerPair, spatial: str, method: str = "ot") -> None:
    """Fail before training on a pair ``method`` (OT or a variant) cannot compare, naming
    both layers and shapes."""
    t, s = pair.teacher_shape, pair.student_shape
    if len(t) != len(s) or len(t) not in (1, 3):
        raise ConfigError(f"method {method!r} cannot compare {pair.describe()}: pair two "
                          "convolutional or two fully connected layers")
    if len(t) == 3 and t[1:] != s[1:] and spatial == "error":
        raise ConfigError(f"method {method!r}: spatial sizes differ for {pair.describe()}; "
                          "set spatial='pool' or pair layers of equal size")


def check_ot_pairs(method: str, pairs: Sequence[LayerPair], spatial: str) -> None:
    """Fail before training on a pair an OT method cannot compare, naming both layers."""
    for pair in pairs:
        check_pair_shapes(pair, spatial, method)


def neuron_hyperparams() -> tuple[HyperParam, ...]:
    """The neuron/cost settings shared by ``ot`` and its variants (fixed unless a suite
    searches them)."""
    return (
        HyperParam("normalize", "categorical", "none", choices=NORMALIZATIONS,
                   searchable=False, help="per-neuron normalization before the cost",
                   source="Li et al. 2021: raw activations"),
        HyperParam("cost_scale", "categorical", "mean", choices=COST_SCALES,
                   searchable=False, help="mean divides the cost by d = B·H·W",
                   source="ours: a λ that does not depend on batch and map size"),
        HyperParam("spatial", "categorical", "pool", choices=SPATIAL_MODES, searchable=False,
                   help="pool the larger feature map to the smaller one, or refuse",
                   source="ours: the pooling AT, NST and FitNets use for unequal maps"),
    )


@register_method("ot")
class OTTransfer(TransferMethod):
    """λ · Σ_layers w_l · Ω(teacher layer, student layer): the paper's regularizer.

    With ``plan_every = k > 1`` the plans are solved on every k-th training step and reused
    in between: the loss is still ``<P, C>`` on the current costs, so its value and gradient
    are exact for the cached plan, which is a feasible (no longer optimal) plan. Costs
    move slowly between steps, and the solver is the expensive part. Steps are counted
    only in training mode; in eval mode the plans are always solved afresh (and not kept).

    With ``plan_lag = 1`` a solving step hands its neurons to a :class:`PlanPipeline` and
    goes on, and its plans are used from the next step on: step t uses the plans solved
    from step t − 1's features (t − 1 .. t − k with ``plan_every = k``), so the step never
    waits for the solver unless the solve outlasts a whole step. The first training step
    has nothing earlier and solves its own plans in place.
    """

    summary = "Wasserstein distance between teacher and student neurons (Li et al. 2021)"
    reference = "Li, Grandvalet, Flamary, Courty & Dou 2021 (no public code)"
    reads = FEATURE_READS
    needs_layer_pairs = True
    hyperparams = (
        HyperParam("weight", "float", 0.1, 1e-4, 10.0, log=True,
                   help="λ, the weight of the summed regularizer",
                   source="ours: the paper gives no λ; the range is its wide log-uniform "
                          "search with the mean-scaled cost"),
        HyperParam("solver", "categorical", "auto", choices=SOLVERS, searchable=False,
                   help="auto = assignment for equal widths, network simplex otherwise",
                   source="the paper's exact OT (POT emd / scipy assignment)"),
        HyperParam("epsilon", "float", 1e-2, 1e-4, 1.0, log=True, searchable=False,
                   help="Sinkhorn entropic weight, relative to the mean cost",
                   source="ours: used by solver sinkhorn only"),
        *neuron_hyperparams(),
        HyperParam("plan_every", "int", 1, 1, 100, searchable=False,
                   help="solve the plans every k training steps and reuse them in between; "
                        "1 = the exact plan at every step",
                   source="the paper: a fresh plan each step"),
        HyperParam("plan_lag", "categorical", 0, choices=(0, 1), searchable=False,
                   help="1 = solve a step's plans on a background CPU thread while the step "
                        "goes on and use them from the next step; 0 = in place",
                   source="the paper: the plan of the step itself (lag 0); 1 is ours, so a "
                          "GPU step never waits for the CPU solve"),
    )

    def __init__(self, context: TransferContext, **hparams: Any) -> None:
        super().__init__(context, **hparams)
        hp = dict(self.hparams)
        self.weight = hp.pop("weight")
        self.plan_every = hp.pop("plan_every")
        if self.plan_every < 1:
            raise ConfigError(f"method 'ot': plan_every must be >= 1, got {self.plan_every}")
        self.plan_lag = hp.pop("plan_lag")
        self.settings = OTSettings(**hp)
        self._pipeline = PlanPipeline(self.settings)
        check_ot_pairs(self.name, self.pairs, self.settings.spatial)
        self._plans: dict[str, Tensor] = {}
        self._steps = 0

    def forward(self, step: StepOutputs) -> dict[str, Tensor]:
        neurons = {}
        for pair in self.pairs:
            teacher, student = pair_features(step, pair)
            neurons[pair.key] = neuron_pair(teacher.detach(), student, self.settings,
                                            pair.describe())
        plans = self._current_plans(neurons)
        return {f"ot/{pair.key}": self.weight * pair.weight
                * plan_cost(plans[pair.key], *neurons[pair.key], self.settings.cost_scale)
                for pair in self.pairs}

    def _current_plans(self, neurons: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """Fresh plans in eval mode and on every ``plan_every``-th training step, else cached."""
        if not self.training:
            return solved_plans(neurons, self.settings)
        if self.plan_lag:
            return self._lagged_plans(neurons)
        if self._steps % self.plan_every == 0:
            self._plans = solved_plans(neurons, self.settings)
        self._steps += 1
        return self._plans

    def _lagged_plans(self, neurons: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """The plans of the last solve before this step; on every ``plan_every``-th step this
        step's neurons go to the pipeline (the first step's are solved in place)."""
        solved = self._pipeline.collect()
        if solved is not None:
            self._plans = solved
        if self._steps % self.plan_every == 0:
            if self._plans:
                self._pipeline.submit(neurons)
            else:
                self._plans = solved_plans(neurons, self.settings)
        self._steps += 1
        return self._plans
