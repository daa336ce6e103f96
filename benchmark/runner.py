"""One training run, end to end: validate → teacher → student → method → train → MLflow.

Everything that can be checked without training is checked in :func:`plan_run` before any
file or MLflow run is written, so a bad config costs a second and leaves no trace.
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from otbench.errors import ConfigError
from otbench.methods import LayerPair, TransferContext, TransferMethod, get_method
from otbench.methods.base import check_applicable, default_pairs, resolve_hparams

from . import tracking
from .config import SCENARIOS, RunConfig, flatten
from .data import Split, TaskData, TaskSpec, load_task
from .data_warnings import small_data_warnings
from .diagnostics import DiagnosticsRecorder, is_recorded, probe_batch
from .models import (
    ModelSpec,
    build_model,
    default_layer_pairs,
    feature_shapes,
    get_model_spec,
    head_parameter_names,
    replace_head,
)
from .teachers import Teacher, TeacherRequest, get_teacher
from .train import EpochLog, Student, accuracy, run_epochs


@dataclass(frozen=True)
class RunPlan:
    """A validated run: parsed tasks, looked-up models and method, resolved parameters."""

    config: RunConfig
    task: TaskSpec
    teacher_request: TeacherRequest
    teacher_spec: ModelSpec
    student_spec: ModelSpec
    method: type[TransferMethod]
    params: dict[str, Any]
    device: torch.device

    @property
    def scenario(self) -> dict[str, bool]:
        return SCENARIOS[self.config.scenario]


@dataclass(frozen=True)
class RunHooks:
    on_epoch: Callable[[EpochLog], None] | None = None
    on_start: Callable[[str], None] | None = None


@dataclass
class RunResult:
    run_id: str
    val_acc: float
    test_acc: float | None
    history: list[EpochLog]
    #: Seconds in the epoch loop (training, validation, diagnostics) less the time spent
    #: logging to MLflow and in the epoch hook (Optuna's pruning): what remains of a sweep
    #: trial's wall time is bookkeeping.
    loop_seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:1``, ``mps`` or ``auto``; an absent device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a device; use cpu, cuda, cuda:N or auto") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} was asked for but CUDA is not available here; "
                          "use --device cpu")
    return device


def check_results_dir(path: str | Path) -> None:
    """A results folder that cannot be written is a clear error before anything runs (not a
    raw OSError from the first cache file or MLflow store put in it)."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ConfigError(f"results_dir {str(folder)!r}: cannot write there "
                          f"({err.strerror or err}); pass --results-dir with a writable "
                          "folder") from None


def plan_run(cfg: RunConfig) -> RunPlan:
    """Check every name and pairing in ``cfg``; raises :class:`ConfigError` naming the field."""
    task = _task(cfg)
    teacher_spec = get_model_spec(cfg.teacher.model)
    student_spec = _student_spec(cfg, teacher_spec)
    method = get_method(cfg.method)
    params = resolve_hparams(method, cfg.params)
    scenario = SCENARIOS[cfg.scenario]
    check_applicable(method, cfg.scenario, same_architecture=scenario["starts_from_teacher"],
                     same_labels=scenario["same_labels"])
    if cfg.layer_weights is not None and cfg.layers is None:
        raise ConfigError("layer_weights needs layers: list the (teacher, student) pairs too")
    return RunPlan(cfg, task, teacher_request(cfg), teacher_spec, student_spec, method, params,
                   resolve_device(cfg.device))


def _task(cfg: RunConfig) -> TaskSpec:
    return replace(TaskSpec.parse(cfg.task, split_seed=cfg.split_seed),
                   val_fraction=cfg.val_fraction)


def teacher_request(cfg: RunConfig) -> TeacherRequest:
    """What ``cfg``'s teacher is, checked without the method (``otbench teacher`` needs no
    plugin for a config whose method comes from one)."""
    get_model_spec(cfg.teacher.model)
    return TeacherRequest(cfg.teacher, _teacher_task(cfg, _task(cfg)), cfg.image_size)




def _teacher_task(cfg: RunConfig, task: TaskSpec) -> TaskSpec | None:
    """The teacher's task: its own for transfer/cross, the run's for distill."""
    if cfg.teacher.weights is not None:
        return None
    if cfg.teacher.task is None:
        if cfg.scenario == "distill":
            return replace(task, per_class=None, split_seed=0)
        raise ConfigError(f"teacher.task is required for scenario {cfg.scenario!r}: the "
                          "source task the teacher is trained on (e.g. teacher.task=digits:0-4)")
    spec = replace(TaskSpec.parse(cfg.teacher.task), val_fraction=cfg.val_fraction)
    # An image folder is its root: two trees' ``:0-4`` are different classes.
    same_labels = (spec.dataset, spec.root, spec.classes) == (task.dataset, task.root,
                                                              task.classes)
    if cfg.scenario == "distill" and not same_labels:
        raise ConfigError(f"scenario 'distill' trains the teacher on the student's task, but "
                          f"teacher.task={cfg.teacher.task!r} has other classes than "
                          f"task={cfg.task!r}; use scenario 'cross' or drop teacher.task")
    if cfg.scenario in ("transfer", "cross") and same_labels:
        raise ConfigError(f"scenario {cfg.scenario!r} moves to a new task, but teacher.task="
                          f"{cfg.teacher.task!r} has the same classes as task={cfg.task!r}; "
                          "use scenario 'distill' or another source task")
    return spec


def _student_spec(cfg: RunConfig, teacher: ModelSpec) -> ModelSpec:
    """The student's architecture; in transfer it is the teacher's."""
    if not SCENARIOS[cfg.scenario]["starts_from_teacher"]:
        if cfg.student is None:
            raise ConfigError(f"student is required for scenario {cfg.scenario!r} (e.g. "
                              "student=cnn-s)")
        return get_model_spec(cfg.student)
    explicit = "student" in cfg.model_fields_set  # the default student is for scratch runs
    if explicit and cfg.student not in (None, teacher.name):
        raise ConfigError(f"scenario 'transfer' starts the student from the teacher, so "
                          f"student must be the teacher's model {teacher.name!r}, got "
                          f"{cfg.student!r}; use scenario 'cross' for another architecture")
    return teacher


def build_student(plan: RunPlan, teacher: Teacher, task: TaskData) -> nn.Module:
    """Transfer: the teacher's weights with a new head; otherwise a fresh model."""
    if task.in_channels != teacher.in_channels:
        raise ConfigError(f"the teacher takes {teacher.in_channels}-channel images but task "
                          f"{plan.config.task!r} has {task.in_channels}; pick tasks with the "
                          "same kind of images")
    if not plan.scenario["starts_from_teacher"]:
        return build_model(plan.student_spec.name, task.num_classes, task.in_channels)
    student = copy.deepcopy(teacher.model).train()
    student.requires_grad_(True)
    return replace_head(student, plan.student_spec, task.num_classes)


def layer_pairs(plan: RunPlan, teacher: nn.Module, student: nn.Module,
                task: TaskData) -> list[LayerPair]:
    """Configured or default (by stage) pairs, with per-example feature shapes; computed for
    every method, since the diagnostics compare these layers whatever the method reads
    (the method itself uses :func:`method_pairs`)."""
    names = pair_names(plan)
    weights = plan.config.layer_weights or [1.0] * len(names)
    if len(weights) != len(names):
        raise ConfigError(f"layer_weights has {len(weights)} values for {len(names)} layer "
                          "pairs; give one weight per pair")
    shape = (task.in_channels, task.image_size, task.image_size)
    t_shapes = feature_shapes(teacher, [t for t, _ in names], shape)
    s_shapes = feature_shapes(student, [s for _, s in names], shape)
    return [LayerPair(t, s, t_shapes[t], s_shapes[s], w)
            for (t, s), w in zip(names, weights, strict=True)]


def pair_names(plan: RunPlan) -> list[tuple[str, str]]:
    """The configured ``layers``, else the teacher and student stages paired by
    :func:`default_layer_pairs`: ``(teacher tap, student tap)`` names, shallow to deep."""
    return plan.config.layers or default_layer_pairs(plan.teacher_spec, plan.student_spec)


Pair = TypeVar("Pair")


def method_pairs(plan: RunPlan, pairs: Sequence[Pair]) -> list[Pair]:
    """The pairs (objects or names) the method uses: the configured ``layers`` all, else the
    stage pairs its ``layers`` property chooses (e.g. FitNets' middle stage)."""
    return list(pairs) if plan.config.layers else default_pairs(pairs, plan.method.layers)


def refit_data(task: TaskData) -> TaskData:
    """The task with its validation split added to its training split (final refit); the
    validation split stays, for the diagnostics' probe batch only."""
    train = Split(x=torch.cat([task.train.x, task.val.x]), y=torch.cat([task.train.y, task.val.y]))
    return replace(task, train=train)


def protocol(cfg: RunConfig, stage: str) -> str:
    """How this run's accuracy was produced, for the report's caption."""
    chosen = "hyper-parameters chosen on validation; " if stage == "final" else ""
    data = "refit on train+val" if cfg.refit else "trained on train (val held out)"
    test = "; test scored after the last epoch" if cfg.evaluate_test else ""
    return f"{chosen}{data}{test}"


#: Stages whose student is also logged as an MLflow model (a sweep's trials keep only the
#: state_dict: nobody loads a searched candidate, and each model costs a store round trip).
MODEL_STAGES = ("run", "final")


def _log_files(run: tracking.RunLogger, model: nn.Module | None,
               recorder: DiagnosticsRecorder | None, *, stage: str, step: int) -> None:
    """The trained student as ``model.pt`` (the state_dict ``otbench analyze`` reads) and, for
    :data:`MODEL_STAGES`, as an MLflow model (on the CPU, so any machine loads it); the
    diagnostics' matchings."""
    with tempfile.TemporaryDirectory() as folder:
        if model is not None:
            torch.save(model.state_dict(), Path(folder) / "model.pt")
            run.log_file(Path(folder) / "model.pt")
            if stage in MODEL_STAGES:
                run.log_pytorch_model(copy.deepcopy(model).cpu().eval(), step=step)
        if recorder is not None:
            run.log_file(recorder.save(Path(folder) / "diagnostics.npz"))


def run_tags(plan: RunPlan, stage: str) -> dict[str, str]:
    cfg = plan.config
    return tracking.standard_tags(stage, scenario=cfg.scenario, task=cfg.task,
                                  method=cfg.method, seed=cfg.seed, teacher=cfg.teacher.model,
                                  student=plan.student_spec.name,
                                  protocol=protocol(cfg, stage), **cfg.tags)


def execute_run(cfg: RunConfig, *, stage: str = "run", run_name: str | None = None,
                parent_run_id: str | None = None,
                on_epoch: Callable[[EpochLog], None] | None = None,
                on_start: Callable[[str], None] | None = None,
                progress: bool = True) -> RunResult:
    """Train one student under one method and log it; see the module docstring.

    ``on_start`` receives the MLflow run id once the run exists (a sweep records it, so a
    run whose worker died can be closed later); ``on_epoch`` may raise to stop the run.
    ``run_name`` defaults to the run's scenario, method, task and seed (a sweep names its
    children by trial and seed, under a parent run that names the study).
    """
    plan = plan_run(cfg)
    check_results_dir(cfg.results_dir)
    uri = tracking.tracking_uri_for(cfg.tracking_uri, cfg.results_dir)
    task = load_task(plan.task, data_dir=cfg.data_dir, download=cfg.download,
                     device=plan.device, image_size=cfg.image_size)
    notes = small_data_warnings(cfg.task, len(task.train), len(task.val), cfg.train.batch_size)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    teacher = get_teacher(plan.teacher_request, device=plan.device, data_dir=cfg.data_dir,
                          download=cfg.download, results_dir=cfg.results_dir, tracking_uri=uri,
                          experiment=cfg.experiment, progress=progress)
    torch.manual_seed(cfg.seed)
    student = build_student(plan, teacher, task).to(plan.device)
    pairs = layer_pairs(plan, teacher.model, student, task)
    used = method_pairs(plan, pairs)
    context = TransferContext(
        teacher=teacher.model, student=student, pairs=used, scenario=cfg.scenario,
        same_architecture=plan.scenario["starts_from_teacher"],
        same_labels=plan.scenario["same_labels"],
        start_weights={n: p.detach().clone() for n, p in student.named_parameters()},
        head=head_parameter_names(student, plan.student_spec))
    method = plan.method(context, **plan.params).to(plan.device)
    reads = plan.method.reads
    runner = Student(student, method,
                     teacher=teacher.model if reads & {"teacher_features", "teacher_logits"}
                     else None,
                     student_taps=[p.student for p in used] if "student_features" in reads
                     else [],
                     teacher_taps=[p.teacher for p in used] if "teacher_features" in reads
                     else [])
    recorder = None
    if cfg.diagnostics and pairs:
        recorder = DiagnosticsRecorder(teacher.model, student, pairs,
                                       probe_batch(task.val, task, cfg.probe_size))
    if cfg.refit:
        task = refit_data(task)
    hooks = RunHooks(on_epoch, on_start)
    name = run_name or f"{cfg.scenario} {cfg.method} {cfg.task} seed{cfg.seed}"
    return _train_logged(plan, runner, task, teacher, uri, stage, name, parent_run_id, hooks,
                         progress, recorder, notes)


def _train_logged(plan: RunPlan, runner: Student, task: TaskData, teacher: Teacher, uri: str,
                  stage: str, run_name: str, parent_run_id: str | None, hooks: RunHooks,
                  progress: bool, recorder: DiagnosticsRecorder | None,
                  notes: list[str]) -> RunResult:
    cfg = plan.config
    resolved = cfg.model_dump()
    resolved["params"] = plan.params
    resolved["student"] = plan.student_spec.name  # in transfer, the teacher's architecture
    with tracking.mlflow_run(uri, cfg.experiment, run_name=run_name, tags=run_tags(plan, stage),
                             artifact_root=Path(cfg.results_dir) / "artifacts",
                             parent_run_id=parent_run_id) as run:
        if hooks.on_start is not None:
            hooks.on_start(run.run_id)
        run.log_params(flatten(resolved))
        run.log_params({"layer_pairs": [[p.teacher, p.student] for p in runner.method.pairs],
                        "teacher_source": teacher.source, "train_examples": len(task.train),
                        "image_size_used": task.image_size})
        if notes:
            run.set_tags({"warnings": "\n".join(notes)})
        run.log_dict(resolved, "config.yaml")
        if recorder is not None:
            run.log_metrics(recorder.record(0), step=0)

        logging_seconds = 0.0

        def log_epoch(log: EpochLog) -> None:
            nonlocal logging_seconds
            metrics = log.metrics()
            if recorder is not None and is_recorded(log.epoch, cfg.diagnostics_every,
                                                    cfg.train.epochs):
                metrics.update(recorder.record(log.epoch))
            start = time.perf_counter()
            run.log_metrics(metrics, step=log.epoch)
            if hooks.on_epoch is not None:
                hooks.on_epoch(log)
            logging_seconds += time.perf_counter() - start

        generator = torch.Generator().manual_seed(cfg.seed)
        loop_start = time.perf_counter()
        history = run_epochs(runner, task, cfg.train, generator=generator, on_epoch=log_epoch,
                             progress=progress, description=f"{cfg.method} {cfg.task}",
                             validate=not cfg.refit)
        loop_seconds = time.perf_counter() - loop_start - logging_seconds
        val_acc = history[-1].val_acc
        final = {} if cfg.refit else {"val/acc_final": val_acc}
        test_acc = accuracy(runner.model, task.test, task) if cfg.evaluate_test else None
        if test_acc is not None:
            final["test/acc"] = test_acc
        run.log_metrics(final, step=cfg.train.epochs)
        _log_files(run, runner.model if cfg.save_model else None, recorder, stage=stage,
                   step=cfg.train.epochs)
    return RunResult(run.run_id, val_acc, test_acc, history, loop_seconds)


