"""How a report names and orders things and which test it runs: one small, validated object.

Kept separate from the rendering code so a suite (or a user's YAML file) can restyle a paper's
tables without touching code: display names, row/column order, the reference method, the test.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import yaml

from otbench.errors import ConfigError, unknown_name

#: Display names of the built-in (and planned) methods; a plugin shows its registered name.
METHOD_NAMES = {"finetune": "Fine-tune", "ot": "OT", "l2sp": "L2-SP", "fitnets": "FitNets",
                "at": "AT", "kd": "KD", "delta": "DELTA", "bss": "BSS", "rkd": "RKD",
                "sp": "SP", "pkt": "PKT", "nst": "NST", "cka": "CKA", "crd": "CRD"}
#: Baselines first, the paper's method last, as papers usually lay out their tables.
METHOD_ORDER = ("finetune", "l2sp", "delta", "bss", "kd", "fitnets", "at", "rkd", "sp", "pkt",
                "nst", "cka", "crd", "ot")
SCENARIO_NAMES = {"transfer": "Transfer", "distill": "Distillation", "cross": "Cross-task",
                  "source": "Source"}
SCENARIO_ORDER = ("transfer", "distill", "cross", "source")
DATASET_NAMES = {"digits": "Digits", "mnist": "MNIST", "fashion-mnist": "Fashion-MNIST",
                 "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
#: Tests a report can mark differences with: two paired by seed, and the unpaired rank-sum
#: test for runs that are not paired.
TESTS = {"paired-t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test",
         "mannwhitney": "Mann-Whitney U (rank-sum) test"}
#: Table files a report can write (report.html is always written).
FORMATS = ("md", "tex", "html", "csv")

#: A class range's hyphen (``5-9``), shown as an en dash in every format.
_CLASS_RANGE = re.compile(r"(?<=\d)-(?=\d)")
EN_DASH = "\u2013"
_TASK = re.compile(r"^(?P<family>.*?)(?:@(?P<per_class>\d+))?$")


@dataclass(frozen=True)
class ReportOptions:
    """Names, order and statistics of a report; every field has a paper-ready default."""

    method_names: dict[str, str] = field(default_factory=dict)
    scenario_names: dict[str, str] = field(default_factory=dict)
    dataset_names: dict[str, str] = field(default_factory=dict)
    task_names: dict[str, str] = field(default_factory=dict)
    method_order: list[str] = field(default_factory=lambda: list(METHOD_ORDER))
    scenario_order: list[str] = field(default_factory=lambda: list(SCENARIO_ORDER))
    task_order: list[str] = field(default_factory=list)
    reference: str = "ot"
    test: str = "paired-t"
    alpha: float = 0.05
    mark: str = "†"
    metric: str = "test/acc"
    scale: float = 100.0
    decimals: int = 1
    overhead: bool = True
    #: ``\label`` of ``table.tex``; by default ``tab:<experiment>``.
    latex_label: str | None = None

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise unknown_name("test", self.test, TESTS)
        if not 0 < self.alpha < 1:
            raise ConfigError(f"report option alpha must be in (0, 1), got {self.alpha}")
        if self.decimals < 0:
            raise ConfigError(f"report option decimals must be >= 0, got {self.decimals}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> ReportOptions:
        """Build from a YAML-like mapping, naming any unknown key (a typo would else be
        silently ignored and the table would not change)."""
        data = dict(data or {})
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in valid:
                raise unknown_name("report option", key, valid)
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ReportOptions:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read report options {path}: {err}") from err
        if not isinstance(data, Mapping):
            raise ConfigError(f"report options {path} must be a mapping of option: value")
        return cls.from_mapping(data)

    # ------------------------------------------------------------------ display names
    def method_label(self, method: str) -> str:
        return self.method_names.get(method) or METHOD_NAMES.get(method, method)

    def scenario_label(self, scenario: str) -> str:
        return self.scenario_names.get(scenario) or SCENARIO_NAMES.get(scenario, scenario)

    def task_label(self, task: str) -> str:
        """``digits:5-9@10`` -> ``Digits 5–9 @10`` (an en dash, which LaTeX gets as ``--``),
        ``imagefolder=/data/CUB@30`` -> ``CUB @30``, unless the task has its own name."""
        if task in self.task_names:
            return self.task_names[task]
        family, per_class = split_task(task)
        dataset, sep, classes = family.partition(":")
        names = {**DATASET_NAMES, **self.dataset_names}
        folder = dataset.partition("imagefolder=")[2]  # a path: its last part names it
        name = names.get(dataset) or (PurePath(folder).name if folder else dataset)
        label = name + (f" {_CLASS_RANGE.sub(EN_DASH, classes)}" if sep else "")
        return label + (f" @{per_class}" if per_class is not None else "")

    # ------------------------------------------------------------------ order
    def order_methods(self, methods: Iterable[str]) -> list[str]:
        return _ordered(methods, self.method_order)

    def order_scenarios(self, scenarios: Iterable[str]) -> list[str]:
        return _ordered(scenarios, self.scenario_order)

    def order_tasks(self, tasks: Iterable[str]) -> list[str]:
        """Configured order first; the rest by family, then samples per class numerically
        (so ``@5`` comes before ``@10``), with the full-data task of a family first."""
        present = set(tasks)
        listed = [t for t in self.task_order if t in present]
        rest = sorted(present - set(listed), key=_task_sort_key)
        return listed + rest


def slug(text: str) -> str:
    """A file-name-safe stem: ``digits:5-9@10`` -> ``digits_5-9_at10``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text.replace("@", "_at")).strip("_")


def report_dir(results_dir: str | Path, experiment: str) -> Path:
    """``<results>/report/<experiment>``, where a sweep and ``otbench report`` write an
    experiment's report: one folder per suite, so two suites sharing a results folder do not
    overwrite each other's report."""
    return Path(results_dir) / "report" / slug(experiment)


def split_task(task: str) -> tuple[str, int | None]:
    """``digits:5-9@10`` -> (``digits:5-9``, 10); no ``@N`` -> (task, None)."""
    match = _TASK.match(task)
    assert match is not None  # the pattern matches every string
    per_class = match["per_class"]
    return match["family"], int(per_class) if per_class is not None else None


def _task_sort_key(task: str) -> tuple[str, int]:
    family, per_class = split_task(task)
    return family, -1 if per_class is None else per_class


def _ordered(names: Iterable[str], order: list[str]) -> list[str]:
    """Names in the configured order, then any others alphabetically (plugins, new tasks)."""
    present = set(names)
    listed = [n for n in order if n in present]
    return listed + sorted(present - set(listed))
