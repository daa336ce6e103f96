"""What the search and final stages share: the worker's context, running one Optuna trial,
and the trial bookkeeping (failure reasons, skipped trials, MLflow run ids)."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

import optuna
import torch
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial

from otbench.benchmark.runner import RunResult
from otbench.benchmark.tracking import client_for

from .studies import FAIL_REASON, LOOP_SECONDS, RUN_ID, SKIPPED
from .suite import StudySpec, Suite


class State(Enum):
    """What a study (or its final stage) offers a worker right now."""

    WORK = "work"  # something this worker can start
    BUSY = "busy"  # only other workers' running trials: wait for them
    DONE = "done"


@dataclass(frozen=True)
class Worker:
    """One worker's settings, shared by everything it runs."""

    suite: Suite
    tracking_uri: str
    progress: bool  # per-epoch progress bars
    verbose: bool  # one line per finished trial

    def say(self, line: str) -> None:
        if self.verbose:
            print(line, flush=True)


@dataclass
class StudyWork:
    """A study, its final-stage companion, and this worker's clock on it."""

    spec: StudySpec
    study: optuna.Study
    final: optuna.Study
    parent_run_id: str
    started: float | None = None


class SkippedTrial(Exception):
    """The trial was not run: another worker holds its budget slot or its seed."""


class TrialTakenOverWarning(UserWarning):
    """Another worker failed this worker's running trial as stale, to retry it."""


def run_one(study: optuna.Study, objective: Callable[[optuna.Trial], float],
            on_done: Callable[[FrozenTrial], None]) -> None:
    """One trial through Optuna's own loop, which beats its heartbeat, fails stale trials
    first and records any exception as FAIL (the sweep goes on).

    A worker whose heartbeat came later than the grace period (a starved or paused process)
    can find its trial failed by another worker when it reports the result, and Optuna then
    raises; the retry owns the trial's seed or budget slot now, so this worker warns and goes
    on.
    """
    started: list[int] = []
    reported: list[int] = []

    def tracked(trial: optuna.Trial) -> float:
        started.append(trial.number)
        return objective(trial)

    def done(_: optuna.Study, trial: FrozenTrial) -> None:
        reported.append(trial.number)
        on_done(trial)

    try:
        study.optimize(tracked, n_trials=1, catch=(Exception,), callbacks=[done])
    except Exception as err:
        if not started or reported or not finished_elsewhere(study, started[-1]):
            raise
        warnings.warn(f"trial {started[-1]} of {study.study_name} was failed as stale by "
                      "another worker while this one ran it (its heartbeat was late by more "
                      "than heartbeat.grace_s), and is retried there; raise grace_s in the "
                      f"suite if this recurs ({type(err).__name__})", TrialTakenOverWarning,
                      stacklevel=2)
    release_device_memory()


def finished_elsewhere(study: optuna.Study, number: int) -> bool:
    """Whether trial ``number``, which this worker has not reported, is finished anyway."""
    return any(t.number == number and t.state.is_finished()
               for t in study.get_trials(deepcopy=False))


def release_device_memory() -> None:
    """A full garbage collection after a trial in a process that uses a GPU: the traceback of
    a failed trial (out of memory, say) keeps its frames' CUDA tensors alive in reference
    cycles until one runs, and the next trial would run short. Not on CPU, where Python's own
    collections suffice: each full one walks every object of torch, MLflow and Optuna, a
    large share of a small trial's time."""
    if torch.cuda.is_initialized():
        gc.collect()


def skip(trial: optuna.Trial, reason: str) -> None:
    """End ``trial`` unrun, marked so it counts neither as a result nor as a failure."""
    trial.set_user_attr(SKIPPED, reason)
    raise SkippedTrial(reason)


def run_recorder(trial: optuna.Trial) -> Callable[[str], None]:
    """``on_start`` hook: the trial remembers its MLflow run, for the stale-trial check."""
    return lambda run_id: trial.set_user_attr(RUN_ID, run_id)


def finished_run_metrics(worker: Worker, trial: optuna.Trial) -> dict[str, float] | None:
    """A retried trial whose first attempt's MLflow run did finish (its worker died just
    before telling Optuna): reuse that run's metrics instead of training a duplicate run."""
    run_id = trial.user_attrs.get(RUN_ID)
    if not run_id:
        return None
    try:
        run = client_for(worker.tracking_uri).get_run(run_id)
    except MlflowException:  # logged to another worker's tracking store
        return None
    if run.info.status != "FINISHED":
        return None
    return run.data.metrics


def record_loop_time(trial: optuna.Trial, result: RunResult) -> None:
    """Keep the run's epoch-loop seconds, from which the sweep's overhead per trial is read."""
    trial.set_user_attr(LOOP_SECONDS, result.loop_seconds)


@contextmanager
def recorded_failure(trial: optuna.Trial) -> Iterator[None]:
    """An exception (NaN loss, OOM, anything) fails the trial with its reason recorded in
    the trial (the MLflow run records it too); pruning is not a failure."""
    try:
        yield
    except optuna.TrialPruned:
        raise
    except Exception as err:
        trial.set_user_attr(FAIL_REASON, f"{type(err).__name__}: {err}"[:2000])
        raise
