"""Optuna plumbing: storage with heartbeats, a seeded TPE, the pruner, and trial bookkeeping.

Every worker (a local process or another machine) opens the same studies in the same
storage; Optuna's storage is the only coordination between them. A trial records its MLflow
run id, so when its worker dies the heartbeat check can close that run (KILLED) and queue the
same parameters again.
"""

from __future__ import annotations

import os
import random
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler, TPESampler
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError

from otbench.benchmark import tracking
from otbench.benchmark.tracking import display_url, with_installed_driver
from otbench.errors import ConfigError

from .schema import HeartbeatSettings, PrunerSettings

if TYPE_CHECKING:
    from .suite import StudySpec

#: Trial user attributes written by the sweep.
RUN_ID = "mlflow_run_id"
FAIL_REASON = "fail_reason"  # an exception ended the trial: it counts as a failure
SKIPPED = "skipped"  # not run: another worker had the budget or the seed (not a failure)
SEED = "seed"  # final stage: which seed the trial trains
PARAMS = "params"  # final stage: the best parameters it re-trains
SOURCE_TRIAL = "source_trial"  # final stage: the study's trial those parameters came from
TEST_ACC = "test_acc"  # final stage: the seed's test accuracy (its value is validation's)
LOOP_SECONDS = "loop_s"  # seconds of the run's epoch loop: the rest of the trial is overhead

#: Tries to open a storage; the first ones can lose a race to create its tables.
STORAGE_ATTEMPTS = 10

#: States that hold or will hold a result; a trial in one of them claims its place.
CLAIMING = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


@contextmanager
def experimental_ok() -> Iterator[None]:
    """Heartbeats and stale-trial retries are Optuna features marked experimental, used on
    purpose; their warning on every call would drown the sweep's own output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def quiet_optuna() -> None:
    """The sweep prints one line per trial itself; Optuna's own log lines would repeat them
    (and print a traceback for every failed trial)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)


#: Environment variable naming the Optuna storage when ``--storage`` is not given: a cluster
#: job sets it once, as it sets MLflow's ``MLFLOW_TRACKING_URI``.
STORAGE_ENV = "OTBENCH_OPTUNA_STORAGE"


def default_storage_url(results_dir: str | Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'optuna.db'}"


def storage_url_for(storage: str | None, results_dir: str | Path) -> str:
    """The URL given, else :data:`STORAGE_ENV`, else SQLite under the results folder."""
    return storage or os.environ.get(STORAGE_ENV) or default_storage_url(results_dir)


def make_storage(url: str, heartbeat: HeartbeatSettings, tracking_uri: str) -> RDBStorage:
    """An RDB storage (SQLite, PostgreSQL, MySQL...) with heartbeats and stale-trial retry."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine: dict[str, Any] = {"connect_args": {"timeout": 120}}  # wait out writers' locks
    else:
        engine = {"pool_pre_ping": True}
        check_reachable(url)  # fail at once, not after the retries below
    callback = StaleTrialCallback(tracking_uri, heartbeat.max_retries)
    attempt = 1
    while True:
        try:
            with experimental_ok():
                return RDBStorage(with_installed_driver(url), engine_kwargs=engine,
                                  heartbeat_interval=heartbeat.interval_s,
                                  grace_period=heartbeat.grace_s,
                                  heartbeat_stale_trial_callback=callback)
        except SQLAlchemyError as err:
            # Machines starting together on a fresh database race to create Optuna's
            # tables; the loser finds them made on its next attempt.
            if attempt == STORAGE_ATTEMPTS:
                raise storage_error(url, err) from None
        except Exception as err:  # a bad URL, a missing driver
            raise storage_error(url, err) from None
        time.sleep(min(attempt, 3) * (0.5 + random.random()))  # jitter: racers drift apart
        attempt += 1


def check_reachable(url: str) -> None:
    """Connect once: a wrong host, port, password or database is a clear error."""
    try:
        engine = create_engine(with_installed_driver(url))
        try:
            engine.connect().close()
        finally:
            engine.dispose()
    except Exception as err:
        raise storage_error(url, err) from None


def storage_error(url: str, err: Exception) -> ConfigError:
    return ConfigError(f"--storage {display_url(url)!r}: cannot open the Optuna storage: "
                       f"{type(err).__name__}: {err}")


@dataclass(frozen=True)
class StaleTrialCallback:
    """Runs when a trial's worker stopped sending heartbeats (it died): close the trial's
    MLflow run as KILLED, then queue the same parameters again (at most ``max_retry`` times;
    the copy keeps the user attributes, so a run that did finish can be reused)."""

    tracking_uri: str
    max_retry: int

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get(RUN_ID)
        if run_id:
            tracking.end_orphaned_run(self.tracking_uri, run_id, f"the worker of Optuna trial "
                                      f"{trial.number} of {study.study_name!r} died")
        with experimental_ok():
            RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(study, trial)


class TrialSeededTPE(BaseSampler):
    """TPE reseeded from (study seed, trial number) at each trial: a rerun proposes the same
    points, while concurrent workers, which share the study seed, still propose different
    ones (one fixed seed per process would make them all try the same parameters)."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._tpe = TPESampler(seed=seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._tpe = TPESampler(seed=(self._seed + trial.number) % 2**32)
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, Any]:
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._tpe.after_trial(study, trial, state, values)


def study_seed(name: str) -> int:
    """A seed from the study name, the same in every process (unlike ``hash``)."""
    return zlib.crc32(name.encode())


def open_study(storage: RDBStorage, name: str, pruner: PrunerSettings | None) -> optuna.Study:
    """Create or load a study (safe when several workers do it at once). ``pruner=None``
    is the final stage's companion study, which never prunes."""
    if pruner is None or pruner.kind == "none":
        chosen: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    else:
        chosen = optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials,
                                             n_warmup_steps=pruner.warmup_epochs)
    return optuna.create_study(storage=storage, study_name=name, direction="maximize",
                               sampler=TrialSeededTPE(study_seed(name)), pruner=chosen,
                               load_if_exists=True)


def describe_studies(study: optuna.Study, final: optuna.Study, spec: StudySpec, suite: str,
                     parent_run_id: str) -> None:
    """Name the objective (optuna-dashboard shows it instead of "Objective 0") and say what
    a study is in its user attributes: which suite, scenario, task, method and MLflow parent
    run; a final stage also says that its trials are seeds valued by validation accuracy.
    Written once (each attribute is a storage write), checked on every later sweep."""
    about = {"suite": suite, "scenario": spec.plan.config.scenario,
             "task": spec.plan.config.task, "method": spec.method,
             "mlflow_parent_run_id": parent_run_id}
    seeds = {"role": "final seeds", "objective": "val_acc: the seed's validation accuracy; "
             "its test accuracy is the trial's test_acc attribute (never pick a seed by it)"}
    for target, attrs in ((study, about), (final, {**about, **seeds})):
        current = target.user_attrs  # one storage read
        for key, value in attrs.items():
            if current.get(key) != value:
                target.set_user_attr(key, value)
        if target.metric_names != ["val_acc"]:
            with experimental_ok():
                target.set_metric_names(["val_acc"])


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's heartbeat check: trials of dead workers become FAIL and are retried."""
    with experimental_ok():
        optuna.storages.fail_stale_trials(study)


@dataclass(frozen=True)
class Counts:
    """Where a study stands, from its trials."""

    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    best: float | None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @property
    def claimed(self) -> int:
        return self.finished + self.running + self.waiting


def count(trials: Sequence[FrozenTrial]) -> Counts:
    states = [t.state for t in trials]
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return Counts(complete=states.count(TrialState.COMPLETE),
                  pruned=states.count(TrialState.PRUNED),
                  failed=sum(is_failure(t) for t in trials),
                  running=states.count(TrialState.RUNNING),
                  waiting=states.count(TrialState.WAITING),
                  best=max(values, default=None))


def overhead_seconds(trials: Sequence[FrozenTrial]) -> list[float]:
    """Per completed trial: its wall time (ask to tell) minus its run's epoch loop, i.e. what
    the sweep spends on Optuna, MLflow, loading the teacher and data, and building models."""
    return [(t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs[LOOP_SECONDS]
            for t in trials if t.state == TrialState.COMPLETE and LOOP_SECONDS in t.user_attrs
            and t.datetime_start is not None and t.datetime_complete is not None]


def is_failure(trial: FrozenTrial) -> bool:
    """An exception ended it (not a dead worker, not a skipped duplicate)."""
    return trial.state == TrialState.FAIL and FAIL_REASON in trial.user_attrs


def claimed_before(trials: Sequence[FrozenTrial], number: int) -> list[FrozenTrial]:
    """Trials numbered before ``number`` that hold or will hold a result. Trial numbers are
    handed out atomically by the storage, so every worker agrees on this order."""
    return [t for t in trials if t.number < number and t.state in CLAIMING]
