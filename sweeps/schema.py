"""The suite file's schema. Unknown keys are errors that suggest the closest valid key.

The top level and each ``scenarios`` entry / ``search`` range are validated separately, so
a typo deep in the file is still reported with its place and a suggestion.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from otbench.benchmark.config import Scenario, Strict

#: Names that become part of Optuna study names and MLflow tag filters: no '/' or quotes.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$"


class Budget(Strict):
    """How much each study may spend: trials, optionally wall time, and failures."""

    trials: PositiveInt = Field(description="finished (complete or pruned) trials per study")
    timeout_s: PositiveFloat | None = Field(
        None, description="a worker starts no new trial of a study after this many seconds")
    max_failures: PositiveInt | None = Field(
        None, description="failed trials after which a study stops (default: trials)")


class PrunerSettings(Strict):
    """Median pruning on per-epoch validation accuracy."""

    kind: Literal["median", "none"] = "median"
    warmup_epochs: NonNegativeInt = Field(2, description="never prune before this epoch")
    startup_trials: NonNegativeInt = Field(2, description="trials run in full before pruning")


class FinalSettings(Strict):
    """The final stage: the best parameters re-trained with seeds 0..seeds-1, on test."""

    seeds: PositiveInt = 3
    refit: Literal["train+val"] | None = Field(
        None, description="train+val: final runs retrain on the training and validation "
        "data together (same epochs), then score test once; unset: they train on the "
        "training split as the search did")
    episodes: bool = Field(
        False, description="final seed s also draws its own training subset of a few-shot "
        "task (split_seed = s), the same for every method: the spread over seeds then "
        "includes which images were drawn, and the comparison stays paired")


class HeartbeatSettings(Strict):
    """How fast a dead worker's trial is noticed (Optuna heartbeats) and retried."""

    interval_s: PositiveInt = 10
    grace_s: PositiveInt = 60
    max_retries: NonNegativeInt = 2


class SearchRange(Strict):
    """A suite's override of one hyper-parameter's declared range."""

    low: float | None = None
    high: float | None = None
    log: bool | None = None
    choices: list[Any] | None = Field(None, min_length=1)


class ScenarioEntry(Strict):
    """One scenario of the suite: a (scenario, task, models) setting and the methods run on it."""

    id: str = Field(pattern=NAME_PATTERN)
    scenario: Scenario
    task: str
    student: str | None = None
    teacher: dict[str, Any] = Field(default_factory=dict)
    methods: list[str] | Literal["all"]
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="run config keys for this entry only")
    search: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="search ranges for this entry only, over the "
        "suite's search: (e.g. fix a parameter to a different value per entry)")


class SuiteFile(Strict):
    """The top level of a suite YAML file."""

    name: str = Field(pattern=NAME_PATTERN)
    experiment: str | None = None
    defaults: dict[str, Any] = Field(default_factory=dict,
                                     description="run config keys shared by every run")
    scenarios: list[dict[str, Any]] = Field(min_length=1)
    budget: Budget
    pruner: PrunerSettings = Field(default_factory=PrunerSettings)
    final: FinalSettings = Field(default_factory=FinalSettings)
    search: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    trial_diagnostics: bool = Field(
        False, description="record the per-epoch representation diagnostics in search trials "
        "too (final runs record them unless defaults set diagnostics: false); the report reads "
        "only final runs")
    report: dict[str, Any] = Field(
        default_factory=dict, description="options of the sweep's report (reference method, "
        "test, names...), as in `otbench report --options`")
    plugins: list[str] = Field(
        default_factory=list, description="plugin files (paths relative to the suite file) "
        "whose methods the suite runs, as with --plugin")
    threads: PositiveInt | None = Field(
        None, description="torch CPU threads per worker (default: the cores shared among "
        "local workers); small models run as fast on 1 and never contend for cores")


def bundled_suites() -> list[str]:
    """Names of the suites shipped in ``sweeps/suites`` (package data)."""
    folder = resources.files("otbench.sweeps") / "suites"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.endswith(".yaml"))
