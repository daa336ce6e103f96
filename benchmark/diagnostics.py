"""How close a student's representation is to its teacher's, and how its neurons are matched.

Once per epoch, for every run whatever its method, on a fixed probe batch of validation
examples: per layer pair the OT distance, linear CKA, the identity-matching distance (equal
widths), the matching (for each student neuron, the teacher neuron with most of its mass),
its stability since the previous recorded epoch, and the plan's column entropy. OT
distance, CKA and stability are MLflow metrics (what the report plots); the matchings,
entropies and identity distances of every recorded epoch go to the run's ``diagnostics.npz``
(every MLflow metric costs a database row per epoch). ``diagnostics_every: k`` records every
k-th epoch only, the first (epoch 0, before training) and the last always. Recording runs in
eval mode without gradient and draws no random numbers, so training is unchanged by it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from otbench.methods import LayerPair
from otbench.methods.base import pool_to
from otbench.methods.ot import (
    OTSettings,
    cost_matrix,
    layer_neurons,
    match_spatial,
    transport_plan,
)
from otbench.methods.similarity import (
    centered_gram,
    cka_of_grams,
    column_entropy,
    matching_stability,
    plan_matching,
)

from .data import Split, TaskData, make_normalizer
from .models import FeatureTaps

#: Seconds each epoch's diagnostics took, logged beside them (their cost, measured per run).
TIME_METRIC = "time/diagnostics"
#: The probe batch depends on this seed only, so every run of a task sees the same examples.
PROBE_SEED = 1234


@dataclass
class LayerSnapshot:
    """Diagnostics of one layer pair at one moment."""

    ot: float
    cka: float
    identity: float | None
    entropy: float
    matching: Tensor
    plan: Tensor


def probe_batch(split: Split, task: TaskData, size: int) -> Tensor:
    """A fixed, normalized batch of up to ``size`` examples (its own generator: no draw
    from the global random stream)."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    index = torch.randperm(len(split), generator=generator)[:size].to(split.x.device)
    return make_normalizer(task)(split.x[index])


@dataclass
class TeacherLayer:
    """One teacher layer on the probe batch, with what every comparison needs from it: its
    centred Gram matrix (CKA) and, per student map size, its neurons and their squared norms
    (the OT cost). A frozen teacher's never change, so a run computes them once, not every
    epoch."""

    features: Tensor
    gram: Tensor
    _neurons: dict[tuple[object, ...], tuple[Tensor, Tensor, tuple[int, ...]]] = field(
        default_factory=dict, repr=False)

    @classmethod
    def of(cls, features: Tensor) -> TeacherLayer:
        return cls(features, centered_gram(features))

    def costs(self, student: Tensor, settings: OTSettings) -> Tensor:
        """The cost matrix to ``student``'s neurons: ``neuron_costs``, teacher side cached."""
        key = (tuple(student.shape[1:]), settings.spatial, settings.normalize)
        if key not in self._neurons:
            teacher, matched = match_spatial(self.features, student, settings.spatial)
            neurons = layer_neurons(teacher, settings)
            self._neurons[key] = (neurons, neurons.pow(2).sum(1, keepdim=True),
                                  tuple(matched.shape[2:]))
        neurons, norms, size = self._neurons[key]
        return cost_matrix(neurons, layer_neurons(pool_to(student, size), settings),
                           settings.cost_scale, norms)


@dataclass(frozen=True)
class TeacherProbe:
    """A teacher's layers on the probe batch (see :class:`TeacherLayer`)."""

    layers: dict[str, TeacherLayer]

    @classmethod
    def of(cls, teacher: nn.Module, layers: Sequence[str], probe: Tensor) -> TeacherProbe:
        features = tapped_features(teacher, layers, probe)
        return cls({name: TeacherLayer.of(f) for name, f in features.items()})


def layer_snapshot(teacher: Tensor | TeacherLayer, student: Tensor,
                   settings: OTSettings | None = None) -> LayerSnapshot:
    """All diagnostics of one layer pair, from the same code ``ot_distance`` and
    ``linear_cka`` use; ``teacher``: its features, or a run's cached :class:`TeacherLayer`."""
    settings = settings or OTSettings()
    if not isinstance(teacher, TeacherLayer):
        teacher = TeacherLayer.of(teacher)
    cost = teacher.costs(student, settings)
    plan = transport_plan(cost, settings)
    square = cost.shape[0] == cost.shape[1]
    cka = cka_of_grams(teacher.gram, centered_gram(student))
    return LayerSnapshot(ot=float((plan * cost).sum()), cka=float(cka),
                         identity=float(cost.diagonal().mean()) if square else None,
                         entropy=float(column_entropy(plan)), matching=plan_matching(plan).cpu(),
                         plan=plan.float().cpu())


@torch.no_grad()
def tapped_features(model: nn.Module, layers: Sequence[str], x: Tensor) -> dict[str, Tensor]:
    """Features at ``layers`` in eval mode; restores the model's mode afterwards."""
    was_training = model.training
    model.eval()
    with FeatureTaps(model, list(layers)) as taps:
        model(x)
        features = {name: value.detach() for name, value in taps.features.items()}
    model.train(was_training)
    return features


def compare(teacher: nn.Module | TeacherProbe, student: nn.Module,
            pairs: Sequence[LayerPair], probe: Tensor) -> dict[str, LayerSnapshot]:
    """Snapshots of every pair, keyed by the student layer: the one code path of diagnostics
    during training and of ``otbench analyze``."""
    if not isinstance(teacher, TeacherProbe):
        teacher = TeacherProbe.of(teacher, [p.teacher for p in pairs], probe)
    s_features = tapped_features(student, [p.student for p in pairs], probe)
    return {p.key: layer_snapshot(teacher.layers[p.teacher], s_features[p.student])
            for p in pairs}


def is_recorded(epoch: int, every: int, last: int) -> bool:
    """Whether ``epoch`` is recorded under ``diagnostics_every: every``: each ``every``-th,
    and always the first (0, before training) and the ``last``."""
    return epoch % every == 0 or epoch == last


class DiagnosticsRecorder:
    """Records snapshots at the epochs it is given: returns the MLflow metrics and keeps the
    rest for the run's artifact (the plans of the first and last epoch only: a plan is
    n_t × n_s)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, pairs: Sequence[LayerPair],
                 probe: Tensor) -> None:
        self.student, self.pairs, self.probe = student, pairs, probe
        self.teacher = TeacherProbe.of(teacher, [p.teacher for p in pairs], probe)
        self.epochs: list[int] = []
        self.matchings: dict[str, list[Tensor]] = {p.key: [] for p in pairs}
        self.values: dict[str, list[float]] = {}  # entropy/<layer>, identity/<layer>
        self.first_plans: dict[str, Tensor] = {}
        self.last_plans: dict[str, Tensor] = {}

    def record(self, epoch: int) -> dict[str, float]:
        """This epoch's ``diag/{ot,cka,stability}/<layer>`` metrics and ``time/diagnostics``:
        the seconds they took."""
        start = time.perf_counter()
        metrics = {}
        for layer, snap in compare(self.teacher, self.student, self.pairs, self.probe).items():
            metrics[f"diag/ot/{layer}"] = snap.ot
            metrics[f"diag/cka/{layer}"] = snap.cka
            matchings = self.matchings[layer]
            if matchings:
                metrics[f"diag/stability/{layer}"] = matching_stability(matchings[-1],
                                                                        snap.matching)
            matchings.append(snap.matching)
            self.values.setdefault(f"entropy/{layer}", []).append(snap.entropy)
            if snap.identity is not None:
                self.values.setdefault(f"identity/{layer}", []).append(snap.identity)
            self.first_plans.setdefault(layer, snap.plan)
            self.last_plans[layer] = snap.plan
        self.epochs.append(epoch)
        metrics[TIME_METRIC] = time.perf_counter() - start
        return metrics

    def arrays(self) -> dict[str, np.ndarray]:
        """``epochs``; per layer, one row per recorded epoch of ``matching/<layer>`` (epochs ×
        student neurons), ``entropy/<layer>`` and ``identity/<layer>`` (equal widths), and
        ``plan_first/<layer>``, ``plan_last/<layer>`` (for heat maps)."""
        arrays: dict[str, np.ndarray] = {"epochs": np.asarray(self.epochs)}
        arrays.update({f"matching/{layer}": torch.stack(history).numpy()
                       for layer, history in self.matchings.items()})
        arrays.update({name: np.asarray(values) for name, values in self.values.items()})
        for layer, plan in self.first_plans.items():
            arrays[f"plan_first/{layer}"] = plan.numpy()
            arrays[f"plan_last/{layer}"] = self.last_plans[layer].numpy()
        return arrays

    def save(self, path: Path) -> Path:
        """:meth:`arrays` as one compressed file: the run's ``diagnostics.npz``."""
        np.savez_compressed(path, **self.arrays())
        return path
