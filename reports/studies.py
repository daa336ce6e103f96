"""Optuna's side of a report: the sweep studies in the Optuna storage, each one's objective
per trial (with the best so far) and its hyper-parameter importances, as the frames the
figures in :mod:`.figures.studies` draw. The storage is optional: without it, a report
simply has no such figures.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna
import pandas as pd
from optuna.study import StudyDirection
from optuna.trial import TrialState

from otbench.benchmark.tracking import with_installed_driver
from otbench.sweeps.studies import STORAGE_ENV


def default_storage(tracking_uri: str) -> str | None:
    """The sweeps' Optuna storage when none is given: the one named by the sweeps'
    environment variable, else the default store beside the default MLflow one
    (``optuna.db`` next to ``mlflow.db``) when that file exists."""
    if os.environ.get(STORAGE_ENV):
        return with_installed_driver(os.environ[STORAGE_ENV])
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = Path(tracking_uri.removeprefix("sqlite:///")).with_name("optuna.db")
    return f"sqlite:///{path}" if path.is_file() else None


def load_studies(storage: str, names: list[str]) -> tuple[dict[str, optuna.Study], list[str]]:
    """The named studies found in the storage, and a note for each one that is not."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = set(optuna.get_all_study_names(storage=storage))
    studies = {name: optuna.load_study(study_name=name, storage=storage)
               for name in names if name in existing}
    notes = [f"Study {name!r} is not in the Optuna storage; no history or importance plot."
             for name in names if name not in existing]
    return studies, notes


def _completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None]


def _pruned(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
            if t.intermediate_values]


def trial_values(study: optuna.Study) -> pd.DataFrame:
    """Per finished trial, by number: ``value`` (a pruned trial's last reported one),
    ``pruned``, and the ``best`` completed value so far (the sweep's convergence; pruned
    trials never set it)."""
    rows = [(t.number, float(t.value), False) for t in _completed(study)]
    rows += [(t.number, float(t.intermediate_values[max(t.intermediate_values)]), True)
             for t in _pruned(study)]
    frame = pd.DataFrame(sorted(rows), columns=["number", "value", "pruned"])
    complete = frame.value.where(~frame.pruned)
    best = complete.cummax() if study.direction == StudyDirection.MAXIMIZE else complete.cummin()
    return frame.assign(best=best.ffill())


def history_problem(study: optuna.Study) -> str | None:
    """Why a study's sweep has nothing to plot (no search, a single trial), or None."""
    finished = _completed(study) + _pruned(study)
    if not any(t.distributions for t in finished):
        return f"{len(finished)} finished trial(s) and no hyper-parameter searched"
    if len(finished) < 2:
        return f"{len(finished)} finished trial(s); a history needs at least 2"
    return None


def importance_problem(study: optuna.Study) -> str | None:
    """Why importances cannot be computed for this study, or None when they can."""
    if len(study.directions) > 1:
        return "multi-objective study"
    trials = _completed(study)
    if len(trials) < 2:
        return f"{len(trials)} completed trial(s); importances need at least 2"
    varying = [name for name in {k for t in trials for k in t.params}
               if len({repr(t.params.get(name)) for t in trials}) > 1]
    if not varying:
        return "no hyper-parameter varies across the completed trials"
    if len({t.value for t in trials}) < 2:
        return "the objective is the same in every completed trial"
    if len(varying) == 1:
        return (f"one hyper-parameter searched ({varying[0]}), whose share of the variance "
                "is 1 by definition")
    return None


def importances(study: optuna.Study) -> pd.Series | str:
    """fANOVA importances by parameter (normalized, most important first), or the reason why
    there are none.

    fANOVA with a fixed seed rather than Optuna 5's default PED-ANOVA: PED-ANOVA compares
    quantiles of the trials and gives up (equal importances, a warning) below a few tens of
    trials, which is every study of a laptop-sized suite; the seed keeps reports identical
    from one run to the next."""
    problem = importance_problem(study)
    if problem is not None:
        return problem
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except RuntimeError as err:  # e.g. "zero total variance in all trees"
            return f"Optuna could not compute them: {err}"
    complaints = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if complaints or not found:
        return complaints[0] if complaints else "Optuna returned no importances"
    return pd.Series(found, dtype=float)
