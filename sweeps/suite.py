"""A suite: its YAML file read, expanded into studies, and every run config validated.

One study per (suite, scenario entry, task, method). Loading a suite runs :func:`plan_run` on
every study's config before anything is created, so a typo or an inapplicable method fails
in a second, with exit code 2, and leaves no file behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from otbench.benchmark.config import (
    SCENARIOS,
    RunConfig,
    deep_merge,
    load_yaml,
    validate_model,
)
from otbench.benchmark.plugins import load_plugins
from otbench.benchmark.runner import RunPlan, plan_run
from otbench.errors import ConfigError, unknown_name
from otbench.methods import get_method, method_names
from otbench.methods.base import check_applicable
from otbench.reports import ReportOptions

from .schema import (
    Budget,
    FinalSettings,
    HeartbeatSettings,
    PrunerSettings,
    ScenarioEntry,
    SearchRange,
    SuiteFile,
    bundled_suites,
)
from .space import Space, build_space

#: Run-config keys a sweep sets itself, with where the user says it instead.
SWEEP_KEYS = {
    "method": "list methods under scenarios[].methods",
    "params": "use the suite's search: section (a one-value choices list fixes a parameter)",
    "experiment": "set the suite's top-level experiment",
    "evaluate_test": "the final stage scores on the test split by itself",
    "refit": "set final.refit: train+val in the suite",
}
#: Keys that must be one value for the whole suite (one results folder, one MLflow store).
SUITE_WIDE_KEYS = ("results_dir", "tracking_uri")
#: Top-level suite keys with this prefix are ignored: places for YAML anchors.
EXTENSION_PREFIX = "x-"
#: Entry fields that an entry's overrides must not repeat.
ENTRY_KEYS = ("scenario", "task", "student", "teacher")


@dataclass(frozen=True)
class StudySpec:
    """One Optuna study: what it trains (a base run config) and what it searches."""

    name: str
    entry: str
    method: str
    config: dict[str, Any]
    space: Space
    trials: int
    plan: RunPlan = field(repr=False, compare=False)

    def run_config(self, params: Mapping[str, Any], *, seed: int | None = None,
                   split_seed: int | None = None, evaluate_test: bool = False,
                   tags: Mapping[str, str] = (), diagnostics: bool = True,
                   refit: bool = False) -> RunConfig:
        """The run config of one trial or final run of this study; ``diagnostics=False``
        turns them off whatever the suite's defaults say."""
        data = deep_merge(self.config, {"params": dict(params), "tags": dict(tags),
                                        "evaluate_test": evaluate_test, "refit": refit})
        if seed is not None:
            data["seed"] = seed
        if split_seed is not None:
            data["split_seed"] = split_seed
        if not diagnostics:
            data["diagnostics"] = False
        return validate_model(RunConfig, data, f"run config of study {self.name!r}")


@dataclass(frozen=True)
class Suite:
    """A validated suite: its studies and the settings shared by all of them."""

    name: str
    experiment: str
    studies: tuple[StudySpec, ...]
    budget: Budget
    pruner: PrunerSettings
    final: FinalSettings
    heartbeat: HeartbeatSettings
    results_dir: str
    tracking_uri: str | None
    threads: int | None
    trial_diagnostics: bool = False
    report: Mapping[str, Any] = field(default_factory=dict)

    @property
    def max_failures(self) -> int:
        return self.budget.max_failures or self.budget.trials


def suite_source(ref: str) -> tuple[str, dict[str, Any]]:
    """``ref`` is a YAML path or a bundled suite's name; returns (display name, mapping)."""
    if Path(ref).is_file():
        return ref, load_yaml(ref)
    if ref in bundled_suites():
        with resources.as_file(bundled_folder() / f"{ref}.yaml") as path:
            return ref, load_yaml(path)
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        raise ConfigError(f"suite file {ref!r} does not exist; give a YAML path or one of "
                          f"the bundled suites: {', '.join(bundled_suites())}")
    raise unknown_name("suite", ref, bundled_suites())


def bundled_folder() -> Any:
    return resources.files("otbench.sweeps") / "suites"


def suite_plugins(ref: str, plugins: list[str]) -> list[str]:
    """The suite's plugin files, relative to the suite file (a bundled suite's folder for a
    bundled suite's name), checked to exist."""
    folder = Path(ref).parent if Path(ref).is_file() else Path(str(bundled_folder()))
    paths = [str((folder / plugin).resolve()) for plugin in plugins]
    for plugin, path in zip(plugins, paths, strict=True):
        if not Path(path).is_file():
            raise ConfigError(f"suite {ref!r} plugins: {plugin!r} is not a file ({path}); "
                              "give a .py path relative to the suite file")
    return paths


def load_suite(ref: str, settings: Mapping[str, Any] = ()) -> Suite:
    """Read, expand and validate a suite. ``settings`` (from the command line: results_dir,
    tracking_uri, device) override the suite's ``defaults``."""
    where, data = suite_source(ref)
    # Top-level ``x-…`` keys hold YAML anchors that entries merge in (``<<: *name``).
    data = {k: v for k, v in data.items() if not str(k).startswith(EXTENSION_PREFIX)}
    raw = validate_model(SuiteFile, data, f"suite {where!r}")
    load_plugins(suite_plugins(ref, raw.plugins))
    try:
        ReportOptions.from_mapping(raw.report)
    except ConfigError as err:
        raise ConfigError(f"suite {where!r} report: {err}") from None
    _check_keys(raw.defaults, "defaults", SWEEP_KEYS)
    validate_model(RunConfig, raw.defaults, f"suite {where!r} defaults")
    defaults = deep_merge(raw.defaults, {k: v for k, v in dict(settings).items()
                                         if v is not None})
    experiment = raw.experiment or raw.name
    search = _search_overrides(raw.search)
    entries = [validate_model(ScenarioEntry, item, f"suite {where!r} scenarios[{i}]")
               for i, item in enumerate(raw.scenarios)]
    _check_unique([e.id for e in entries], "scenarios[].id")
    studies = tuple(study for i, entry in enumerate(entries)
                    for study in _entry_studies(raw, i, entry, defaults, experiment, search))
    first = studies[0].plan.config
    return Suite(raw.name, experiment, studies, raw.budget, raw.pruner, raw.final,
                 raw.heartbeat, first.results_dir, first.tracking_uri, raw.threads,
                 raw.trial_diagnostics, raw.report)


def _search_overrides(search: Mapping[str, Mapping[str, Any]], where: str = "search"
                      ) -> dict[str, dict[str, SearchRange]]:
    """``search:`` validated: known methods, well-formed ranges (parameters are checked
    against each method when its space is built)."""
    out: dict[str, dict[str, SearchRange]] = {}
    for method, params in search.items():
        if method not in method_names():
            raise unknown_name(f"method (in {where}:)", method, method_names())
        out[method] = {name: validate_model(SearchRange, rng or {}, f"{where}.{method}.{name}")
                       for name, rng in params.items()}
        build_space(get_method(method), out[method])  # unknown parameters, bad ranges
    return out


def _entry_studies(raw: SuiteFile, index: int, entry: ScenarioEntry,
                   defaults: Mapping[str, Any], experiment: str,
                   search: Mapping[str, Mapping[str, SearchRange]]) -> list[StudySpec]:
    """The studies of one scenario entry, each config validated by :func:`plan_run`."""
    where = f"scenarios[{index}] (id {entry.id!r})"
    _check_keys(entry.overrides, f"{where}.overrides",
                {**SWEEP_KEYS, **{k: "set it in defaults or on the command line"
                                  for k in SUITE_WIDE_KEYS},
                 **{k: f"set {where}.{k}" for k in ENTRY_KEYS}})
    base = deep_merge(defaults, {"scenario": entry.scenario, "task": entry.task,
                                 "teacher": entry.teacher})
    if entry.student is not None:
        base["student"] = entry.student
    base = deep_merge(base, entry.overrides)
    entry_search = _search_overrides(entry.search, f"{where}.search")
    methods = _entry_methods(entry, where)
    if unused := sorted(entry_search.keys() - set(methods)):
        raise ConfigError(f"{where}.search.{unused[0]}: method {unused[0]!r} is not run in "
                          f"this entry (its methods: {', '.join(methods)}); add it to the "
                          "entry's methods or remove this search entry")
    studies = []
    for method in methods:
        name = f"{raw.name}/{entry.id}/{entry.task}/{method}"
        config = deep_merge(base, {"method": method, "experiment": experiment,
                                   "tags": {"suite": raw.name, "scenario_id": entry.id,
                                            "study": name}})
        try:
            plan = plan_run(validate_model(RunConfig, config, "run config"))
        except ConfigError as err:
            raise ConfigError(f"{where}, method {method!r}: {err}") from None
        space = build_space(plan.method, {**search.get(method, {}),
                                          **entry_search.get(method, {})})
        # Nothing to search means one run says all a budget of trials would.
        studies.append(StudySpec(name, entry.id, method, config, space,
                                 raw.budget.trials if space else 1, plan))
    return studies


def _entry_methods(entry: ScenarioEntry, where: str) -> list[str]:
    """The entry's method list; ``all`` = every registered method that applies here."""
    if entry.methods != "all":
        if not entry.methods:
            raise ConfigError(f"{where}.methods: empty; list methods or write 'all'")
        _check_unique(entry.methods, f"{where}.methods")
        return list(entry.methods)
    flags = SCENARIOS[entry.scenario]
    applicable = []
    for name in method_names():
        try:
            check_applicable(get_method(name), entry.scenario,
                             same_architecture=flags["starts_from_teacher"],
                             same_labels=flags["same_labels"])
        except ConfigError:
            continue
        applicable.append(name)
    return applicable


def _check_keys(data: Mapping[str, Any], where: str, refused: Mapping[str, str]) -> None:
    for key in data:
        if key in refused:
            raise ConfigError(f"{where}.{key}: not allowed here; {refused[key]}")


def _check_unique(values: list[str], where: str) -> None:
    seen = set()
    for value in values:
        if value in seen:
            raise ConfigError(f"{where}: {value!r} is listed twice")
        seen.add(value)
