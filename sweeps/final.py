"""The final stage: a study's best parameters re-trained with seeds 0..N-1, scored on test.
With ``final.episodes``, seed s of a few-shot task also trains on its own draw of the
images (``split_seed = s``), the same draw for every method.

Each seed is a trial of a companion study ``<study>/final``, queued with the seed and the
parameters in its user attributes. A seed's objective value is its run's *validation*
accuracy (0 under ``final.refit``, which has none held out), and its test accuracy a user
attribute (``test_acc``): ``best_trial`` of a final study never picks a seed by its test
score. Optuna's storage hands a
queued trial to exactly one worker, and heartbeats retry a seed whose worker died, so many
workers and reruns produce one final run per seed. (Two workers queueing at the same instant
can queue a seed twice; the later copy is skipped when it starts.)
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from otbench.benchmark.runner import execute_run

from .schema import FinalSettings
from .studies import (
    CLAIMING,
    FAIL_REASON,
    PARAMS,
    SEED,
    SKIPPED,
    SOURCE_TRIAL,
    TEST_ACC,
    claimed_before,
    count,
    fail_stale_trials,
    is_failure,
)
from .suite import StudySpec
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


def study_name(study: str) -> str:
    return f"{study}/final"


def state(worker: Worker, work: StudyWork) -> State:
    """Queues the seeds still missing (once the search is done), then: WORK while a seed is
    queued, BUSY while seeds run elsewhere, DONE when every seed has a result or failed."""
    fail_stale_trials(work.final)
    if queue_missing_seeds(work, worker.suite.final.seeds):
        return State.WORK
    counts = count(work.final.get_trials(deepcopy=False))
    if counts.waiting:
        return State.WORK
    return State.BUSY if counts.running else State.DONE


def queue_missing_seeds(work: StudyWork, seeds: int) -> bool:
    """Queue each seed with no result, run or queued trial and no failure; returns whether
    any was queued. Nothing is queued for a study without a completed trial."""
    trials = work.final.get_trials(deepcopy=False)
    covered = {t.user_attrs.get(SEED) for t in trials if t.state in CLAIMING or is_failure(t)}
    missing = [seed for seed in range(seeds) if seed not in covered]
    source = chosen_params(work.study, trials) if missing else None
    if source is None:
        return False
    number, params = source
    for seed in missing:
        work.final.enqueue_trial({}, user_attrs={SEED: seed, PARAMS: params,
                                                 SOURCE_TRIAL: number})
    return True


def chosen_params(study: optuna.Study, final_trials: Sequence[FrozenTrial]
                  ) -> tuple[int, dict[str, Any]] | None:
    """(trial number, params) to re-train: those already queued for a seed, so a resumed or
    concurrent final stage never mixes two choices; else the study's best trial."""
    for trial in final_trials:
        if PARAMS in trial.user_attrs:
            return trial.user_attrs[SOURCE_TRIAL], trial.user_attrs[PARAMS]
    best = best_trial(study.get_trials(deepcopy=False))
    return None if best is None else (best.number, best.params)


def best_trial(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The completed trial with the highest value (the earliest among equals)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return max(complete, key=lambda t: (t.value, -t.number), default=None)


def run_seed(worker: Worker, work: StudyWork) -> None:
    run_one(work.final, lambda trial: objective(worker, work, trial),
            lambda trial: report(worker, work, trial))


def objective(worker: Worker, work: StudyWork, trial: optuna.Trial) -> float:
    """Train one seed with the chosen parameters (stage ``final``), scored on test too; its
    validation accuracy is the value, its test accuracy the ``test_acc`` attribute."""
    seed = trial.user_attrs.get(SEED)
    if seed is None:
        skip(trial, "not a queued seed: another worker took the queued one first")
    twins = [t.number for t in claimed_before(work.final.get_trials(deepcopy=False),
                                              trial.number) if t.user_attrs.get(SEED) == seed]
    if twins:
        skip(trial, f"seed {seed} is already trial {twins[0]}'s")
    refit = worker.suite.final.refit == "train+val"
    reused = finished_run_metrics(worker, trial)
    if reused is not None and "test/acc" in reused and (refit or "val/acc_final" in reused):
        trial.set_user_attr(TEST_ACC, reused["test/acc"])
        return seed_value(reused.get("val/acc_final"), refit)
    cfg = work.spec.run_config(trial.user_attrs[PARAMS], seed=seed,
                               split_seed=episode_split(worker.suite.final, work.spec, seed),
                               evaluate_test=True,
                               tags={"best_trial": str(trial.user_attrs[SOURCE_TRIAL])},
                               refit=refit)
    with recorded_failure(trial):
        result = execute_run(cfg, stage="final", run_name=f"final seed {seed}",
                             parent_run_id=work.parent_run_id,
                             on_start=run_recorder(trial), progress=worker.progress)
    record_loop_time(trial, result)
    assert result.test_acc is not None  # evaluate_test=True
    trial.set_user_attr(TEST_ACC, result.test_acc)
    return seed_value(result.val_acc, refit)


def seed_value(val_acc: float | None, refit: bool) -> float:
    """A final seed's objective value: its validation accuracy, never its test score. A
    refit trained on the validation data too and has no held-out score: 0 for every seed,
    so no seed is preferred to another."""
    return 0.0 if refit else float(val_acc)


def episode_split(final: FinalSettings, spec: StudySpec, seed: int) -> int | None:
    """The split seed of final seed ``seed``: its own with episodes on a few-shot task (a
    full-data task has no subset to draw), else None (the study's)."""
    return seed if final.episodes and spec.plan.task.per_class is not None else None


def report(worker: Worker, work: StudyWork, trial: FrozenTrial) -> None:
    if SKIPPED in trial.user_attrs:
        return
    outcome = (f"test acc {trial.user_attrs[TEST_ACC]:.4f}"
               if trial.state == TrialState.COMPLETE
               else f"failed: {trial.user_attrs.get(FAIL_REASON, trial.state.name)}")
    worker.say(f"[{work.spec.name}] final seed {trial.user_attrs[SEED]}: {outcome}")


def test_accuracies(final: optuna.Study) -> list[float]:
    """The final stage's test accuracies so far, one per seed."""
    return [t.user_attrs[TEST_ACC]
            for t in final.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if TEST_ACC in t.user_attrs]


def summary(values: Sequence[float]) -> str:
    if not values:
        return "no final result"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"test acc {statistics.mean(values):.4f} ± {spread:.4f} (n={len(values)})"
