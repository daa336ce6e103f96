"""The search stage: Optuna trials of one study, each a training run scored on validation."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import ClassVar

import optuna
from optuna.trial import FrozenTrial

from otbench.benchmark.runner import execute_run
from otbench.benchmark.tracking import RunStopped
from otbench.benchmark.train import EpochLog

from .space import suggest
from .studies import SKIPPED, claimed_before, count, fail_stale_trials
from .trials import (
    State,
    StudyWork,
    Worker,
    finished_run_metrics,
    record_loop_time,
    recorded_failure,
    run_one,
    run_recorder,
    skip,
)


class TrialPruned(RunStopped):
    """Raised from the epoch hook: the MLflow run ends FINISHED with the tag ``pruned``
    (not KILLED, which marks a dead worker), the Optuna trial PRUNED."""

    tags: ClassVar[Mapping[str, str]] = {"pruned": "true"}


def state(worker: Worker, work: StudyWork) -> State:
    """WORK while the budget has unclaimed trials (or a retry is queued), BUSY while trials
    run elsewhere, DONE once the budget, the failure cap or the time limit is reached."""
    fail_stale_trials(work.study)
    counts = count(work.study.get_trials(deepcopy=False))
    timeout = worker.suite.budget.timeout_s
    timed_out = (timeout is not None and work.started is not None
                 and time.monotonic() - work.started >= timeout)
    stop = (counts.finished >= work.spec.trials or counts.failed >= worker.suite.max_failures
            or timed_out)
    if not stop and (counts.waiting or counts.claimed < work.spec.trials):
        return State.WORK
    return State.BUSY if counts.running else State.DONE


def run_trial(worker: Worker, work: StudyWork) -> None:
    if work.started is None:
        work.started = time.monotonic()
    run_one(work.study, lambda trial: objective(worker, work, trial),
            lambda trial: report(worker, work, trial))


def objective(worker: Worker, work: StudyWork, trial: optuna.Trial) -> float:
    """Train one trial's run (stage ``trial``); its validation accuracy is the objective."""
    ahead = claimed_before(work.study.get_trials(deepcopy=False), trial.number)
    if len(ahead) >= work.spec.trials:
        skip(trial, "the budget was claimed by other workers' trials")
    params = suggest(trial, work.spec.space)
    reused = finished_run_metrics(worker, trial)
    if reused is not None and "val/acc_final" in reused:
        return reused["val/acc_final"]
    # Nothing reads a trial's diagnostics (the report uses final runs): off unless asked.
    cfg = work.spec.run_config(params, tags={"trial": str(trial.number)},
                               diagnostics=worker.suite.trial_diagnostics)

    def on_epoch(log: EpochLog) -> None:
        trial.report(log.val_acc, log.epoch)
        if trial.should_prune():
            raise TrialPruned(f"val acc {log.val_acc:.4f} at epoch {log.epoch} is below the "
                              "median of earlier trials")

    with recorded_failure(trial):
        try:
            result = execute_run(cfg, stage="trial", run_name=f"trial {trial.number}",
                                 parent_run_id=work.parent_run_id,
                                 on_epoch=on_epoch, on_start=run_recorder(trial),
                                 progress=worker.progress)
        except TrialPruned as err:
            raise optuna.TrialPruned(str(err)) from None
    record_loop_time(trial, result)
    return result.val_acc


def report(worker: Worker, work: StudyWork, trial: FrozenTrial) -> None:
    """The study's progress line after one of this worker's trials."""
    if SKIPPED in trial.user_attrs:
        return
    counts = count(work.study.get_trials(deepcopy=False))
    best = "none yet" if counts.best is None else f"{counts.best:.4f}"
    worker.say(f"[{work.spec.name}] trials {counts.finished}/{work.spec.trials} done "
               f"({counts.pruned} pruned, {counts.failed} failed), best val acc {best}")
