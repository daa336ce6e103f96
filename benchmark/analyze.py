"""``otbench analyze``: the training diagnostics between any two trained models.

A student is an MLflow run id (its ``model.pt`` artifact, architecture and task from the
run's params); a teacher is a teacher cache file (``results/teachers/*.pt``) or the id of a
run that used it: a teacher run, a student run, or a sweep's study run.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow.exceptions import MlflowException
from torch import nn

from otbench.errors import ConfigError
from otbench.methods import LayerPair

from . import tracking
from .data import TaskSpec, load_task
from .diagnostics import LayerSnapshot, compare, probe_batch
from .models import build_model, default_layer_pairs, feature_shapes, get_model_spec


@dataclass
class LoadedModel:
    name: str  # architecture
    state: dict[str, torch.Tensor]
    task: str | None  # the task it was trained on, when known
    source: str


def load_reference(reference: str, uri: str) -> LoadedModel:
    """A teacher cache file or an MLflow run id -> architecture, weights and task."""
    path = Path(reference)
    if path.suffix == ".pt" and path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or "key" not in payload:
            raise ConfigError(f"{reference!r} is not an otbench teacher file; give a file "
                              "from results/teachers/ or an MLflow run id")
        return LoadedModel(payload["key"]["model"], payload["state_dict"],
                           payload["key"]["task"], reference)
    client = tracking.client_for(uri)
    try:
        params = client.get_run(reference).data.params
        with tempfile.TemporaryDirectory() as folder:
            file = tracking.download_artifact(client, reference, "model.pt", folder)
            state = torch.load(file, map_location="cpu", weights_only=True)
    except MlflowException as err:
        raise ConfigError(f"{reference!r} is neither a teacher .pt file nor a run with a "
                          f"model.pt artifact in {uri} ({str(err).splitlines()[0]}); check "
                          "the id or pass --tracking-uri") from None
    return LoadedModel(params["student"], state, params.get("task"), f"run {reference}")


def teacher_reference(reference: str, uri: str) -> str:
    """``--teacher``: a cache file as given; a run id names the cache of that run's teacher
    (the one it trained, or the one it learned from; a study run: its trials')."""
    if Path(reference).suffix == ".pt":
        return reference
    client = tracking.client_for(uri)
    try:
        run = client.get_run(reference)
        if run.data.tags.get("stage") == "study":
            children = client.search_runs(
                [run.info.experiment_id], tracking.tags_where({"mlflow.parentRunId": reference}),
                max_results=1)
            run = children[0] if children else run
    except MlflowException as err:
        raise ConfigError(f"--teacher {reference!r} is neither a teacher .pt file nor a run "
                          f"in {uri} ({str(err).splitlines()[0]}); check the id or pass "
                          "--tracking-uri") from None
    found = run.data.tags.get("teacher_cache") or run.data.params.get("teacher_source")
    if not found or Path(found).suffix != ".pt":
        raise ConfigError(f"--teacher {reference!r}: run has no teacher cache file (its "
                          f"teacher came from {found!r}); pass the teacher's .pt file")
    return found


def instantiate(model: LoadedModel, in_channels: int, task: str) -> nn.Module:
    """Build the architecture and load the weights, explaining a task that does not fit."""
    spec = get_model_spec(model.name)
    num_classes = model.state[f"{spec.head}.weight"].shape[0]
    network = build_model(model.name, num_classes, in_channels)
    try:
        network.load_state_dict(model.state)
    except RuntimeError:
        raise ConfigError(f"{model.source} ({model.name}, trained on {model.task!r}) does not "
                          f"take the images of task {task!r} ({in_channels} channels); pass "
                          "--task with the kind of data it was trained on") from None
    return network.eval()


def parse_layers(items: list[str] | None) -> list[tuple[str, str]] | None:
    if not items:
        return None
    pairs = []
    for item in items:
        teacher, sep, student = item.partition(":")
        if not sep:
            raise ConfigError(f"--layers expects TEACHER_LAYER:STUDENT_LAYER, got {item!r}")
        pairs.append((teacher, student))
    return pairs


@dataclass
class Analysis:
    """Diagnostics per layer pair, and what they were computed from."""

    snapshots: dict[str, LayerSnapshot]
    teacher: str
    student: str
    task: str
    probe_images: int

    def header(self) -> str:
        return (f"teacher: {self.teacher}\nstudent: {self.student}\nprobe: "
                f"{self.probe_images} validation images of task {self.task}")


def analyze(teacher_ref: str, student_ref: str, *, task: str | None, uri: str,
            layers: list[tuple[str, str]] | None = None, probe_size: int = 256,
            device: str = "cpu", data_dir: str = "data") -> Analysis:
    """Diagnostics of the student against the teacher on a task's fixed probe batch."""
    teacher = load_reference(teacher_reference(teacher_ref, uri), uri)
    student = load_reference(student_ref, uri)
    task_text = task or student.task
    if task_text is None:
        raise ConfigError("no task known for the probe batch; pass --task (e.g. digits:5-9)")
    data = load_task(TaskSpec.parse(task_text), data_dir=data_dir, device=device)
    t_net = instantiate(teacher, data.in_channels, task_text).to(device)
    s_net = instantiate(student, data.in_channels, task_text).to(device)
    names = layers or default_layer_pairs(get_model_spec(teacher.name),
                                          get_model_spec(student.name))
    shape = (data.in_channels, data.image_size, data.image_size)
    t_shapes = feature_shapes(t_net, [t for t, _ in names], shape)
    s_shapes = feature_shapes(s_net, [s for _, s in names], shape)
    pairs = [LayerPair(t, s, t_shapes[t], s_shapes[s]) for t, s in names]
    probe = probe_batch(data.val, data, probe_size)
    return Analysis(compare(t_net, s_net, pairs, probe), teacher.source, student.source,
                    task_text, len(probe))


def _unsigned(value: float, digits: int) -> float:
    """``value``, but 0.0 where it would print as ``-0.0000`` (an entropy rounding below 0)."""
    return 0.0 if round(value, digits) == 0 else value


def format_table(snapshots: dict[str, LayerSnapshot]) -> str:
    rows = [f"{'layer':<16}{'OT':>12}{'CKA':>10}{'identity':>12}{'entropy':>10}"]
    for layer, snap in snapshots.items():
        identity = "-" if snap.identity is None else f"{snap.identity:.6g}"
        rows.append(f"{layer:<16}{snap.ot:>12.6g}{snap.cka:>10.4f}{identity:>12}"
                    f"{_unsigned(snap.entropy, 4):>10.4f}")
    return "\n".join(rows)


def cmd_analyze(args: argparse.Namespace) -> int:
    uri = tracking.tracking_uri_for(args.tracking_uri, args.results_dir)
    result = analyze(args.teacher, args.student, task=args.task, uri=uri,
                     layers=parse_layers(args.layers), probe_size=args.probe_size,
                     device=args.device, data_dir=args.data_dir)
    snapshots = result.snapshots
    print(result.header())
    print(format_table(snapshots))
    if args.log_to:
        metrics: dict[str, Any] = {}
        for layer, snap in snapshots.items():
            metrics.update({f"analyze/ot/{layer}": snap.ot, f"analyze/cka/{layer}": snap.cka,
                            f"analyze/entropy/{layer}": snap.entropy})
        tracking.RunLogger(tracking.client_for(uri), args.log_to).log_metrics(metrics)
        print(f"logged to run {args.log_to}")
    return 0
