"""How close a student's representation is to its teacher's, and how its neurons are matched.

Once per epoch, for every run whatever its method, on a fixed probe batch of validation
examples: per layer pair the OT distance, linear CKA, the identity-matching distance (equal
widths), the matching (for each student neuron, the teacher neuron with most of its mass),
its stability since the previous epoch, and the plan's column entropy. Recording runs in eval
mode without gradient and draws no random numbers, so training is unchanged by it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from otbench.methods import LayerPair
from otbench.methods.ot import OTSettings, neuron_costs, transport_plan
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


@dataclass(frozen=True)
class TeacherProbe:
    """A teacher's features on the probe batch and their centred Gram matrices (for CKA):
    a frozen teacher's never change, so a run computes them once, not every epoch."""

    features: dict[str, Tensor]
    grams: dict[str, Tensor]

    @classmethod
    def of(cls, teacher: nn.Module, layers: Sequence[str], probe: Tensor) -> TeacherProbe:
        features = tapped_features(teacher, layers, probe)
        return cls(features, {name: centered_gram(f) for name, f in features.items()})


def layer_snapshot(teacher: Tensor, student: Tensor, settings: OTSettings | None = None,
                   teacher_gram: Tensor | None = None) -> LayerSnapshot:
    """All diagnostics of one layer pair, from the same code ``ot_distance`` and
    ``linear_cka`` use (``teacher_gram``: the teacher's centred Gram matrix, if known)."""
    settings = settings or OTSettings()
    cost = neuron_costs(teacher, student, settings)
    plan = transport_plan(cost, settings)
    square = cost.shape[0] == cost.shape[1]
    if teacher_gram is None:
        teacher_gram = centered_gram(teacher)
    cka = cka_of_grams(teacher_gram, centered_gram(student))
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
    return {p.key: layer_snapshot(teacher.features[p.teacher], s_features[p.student],
                                  teacher_gram=teacher.grams[p.teacher]) for p in pairs}


def snapshot_metrics(snapshots: dict[str, LayerSnapshot]) -> dict[str, float]:
    """MLflow metrics ``diag/<quantity>/<layer>``."""
    metrics = {}
    for layer, snap in snapshots.items():
        metrics[f"diag/ot/{layer}"] = snap.ot
        metrics[f"diag/cka/{layer}"] = snap.cka
        metrics[f"diag/entropy/{layer}"] = snap.entropy
        if snap.identity is not None:
            metrics[f"diag/identity/{layer}"] = snap.identity
    return metrics


class DiagnosticsRecorder:
    """Records snapshots every epoch and keeps the matchings for the run's artifact."""

    def __init__(self, teacher: nn.Module, student: nn.Module, pairs: Sequence[LayerPair],
                 probe: Tensor) -> None:
        self.student, self.pairs, self.probe = student, pairs, probe
        self.teacher = TeacherProbe.of(teacher, [p.teacher for p in pairs], probe)
        self.epochs: list[int] = []
        self.matchings: dict[str, list[Tensor]] = {p.key: [] for p in pairs}
        self.first_plans: dict[str, Tensor] = {}
        self.last_plans: dict[str, Tensor] = {}

    def record(self, epoch: int) -> dict[str, float]:
        """This epoch's ``diag/…`` metrics, and ``time/diagnostics``: the seconds they took."""
        start = time.perf_counter()
        snapshots = compare(self.teacher, self.student, self.pairs, self.probe)
        metrics = snapshot_metrics(snapshots)
        for layer, snap in snapshots.items():
            history = self.matchings[layer]
            if history:
                metrics[f"diag/stability/{layer}"] = matching_stability(history[-1],
                                                                        snap.matching)
            history.append(snap.matching)
            self.first_plans.setdefault(layer, snap.plan)
            self.last_plans[layer] = snap.plan
        self.epochs.append(epoch)
        metrics[TIME_METRIC] = time.perf_counter() - start
        return metrics

    def save(self, path: Path) -> Path:
        """One compressed file: epochs, matchings (epochs × student neurons) per layer, and
        the plans of the first and last recorded epochs (for heat maps)."""
        arrays: dict[str, np.ndarray] = {"epochs": np.asarray(self.epochs)}
        for layer, history in self.matchings.items():
            arrays[f"matching/{layer}"] = torch.stack(history).numpy()
            arrays[f"plan_first/{layer}"] = self.first_plans[layer].numpy()
            arrays[f"plan_last/{layer}"] = self.last_plans[layer].numpy()
        np.savez_compressed(path, **arrays)
        return path
