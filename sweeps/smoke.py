"""``otbench sweep SUITE --smoke``: a suite's whole pipeline in minutes, on generated data.

The suite is checked as it is, then copied with small budgets and written next to the smoke
results; the copy is swept like any suite, so teachers, search, final stage and report all
run, with every model pair, tap, layer pairing and method of the suite, on batches of its
real shapes. The copy changes what the schema says, never anything by name:

* one trial per study, one final seed, one epoch for every run and teacher (a step or two,
  since the generated datasets are just large enough for the tasks' class counts,
  ``@PER_CLASS`` and validation splits);
* every dataset replaced by generated data in its real format, under the results folder:
  CIFAR's pickled batches as torchvision reads them, image folders as JPEG trees at the
  suite's resolution (``digits`` ships with scikit-learn and is used as it is);
* published or local teacher weights replaced by a randomly initialized state_dict file of
  the same model and head, so nothing is downloaded;
* the representation diagnostics recorded by the first entry of each model pair only
  (they depend on the models and layers, not on the task, and at ResNet-50's widths they
  cost more than the run on a CPU);
* images read at the smallest of :data:`SMOKE_SIZES` pixels a side that both models
  accept (the models pool adaptively, so only the feature maps' sizes change), and no
  model file logged per run (a ResNet-50 is ~100 MB).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from otbench.benchmark.config import deep_merge
from otbench.benchmark.data import DATASETS, TaskSpec
from otbench.benchmark.data.generated import write_cifar, write_imagefolder
from otbench.benchmark.data.tasks import DEFAULT_FOLDER_SIZE
from otbench.benchmark.models import build_model, feature_shapes
from otbench.benchmark.runner import RunPlan
from otbench.errors import ConfigError

from .suite import EXTENSION_PREFIX, Suite, load_suite, suite_source

#: Image sides a smoke run tries, smallest first: compute falls with the square of the side,
#: and the datasets' class counts fix how many images a run reads.
SMOKE_SIZES = (8, 16, 32)
#: Classes of a generated image folder when the tasks do not name higher class indices.
FOLDER_CLASSES = 2
#: torchvision's class for each CIFAR dataset name.
CIFAR_CLASSES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}
#: Datasets that are real files shipped with a library: used as they are.
SHIPPED = ("digits",)
SUITE_FILE = "smoke-suite.yaml"


@dataclass
class Need:
    """What the tasks ask of one dataset (or one image folder)."""

    classes: int = 0
    train_per_class: int = 0
    image_size: int = DEFAULT_FOLDER_SIZE


def smoke_results_dir(suite: Suite, settings: Mapping[str, Any]) -> Path:
    """``--results-dir`` when given, else a ``smoke/<suite>`` folder in the suite's."""
    given = settings.get("results_dir")
    return Path(given) if given else Path(suite.results_dir) / "smoke" / suite.name


def prepare_smoke(ref: str, settings: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Check ``ref``, generate its data and write its smoke copy; returns the copy's path and
    the settings to sweep it with."""
    suite = load_suite(ref, settings)
    results = smoke_results_dir(suite, settings).resolve()
    data_dir = results / "data"
    _, raw = suite_source(ref)
    raw = {k: v for k, v in raw.items() if not str(k).startswith(EXTENSION_PREFIX)}
    plans = {}
    for spec in suite.studies:
        plans.setdefault(spec.entry, spec.plan)  # an entry's studies share data and teacher
    needs: dict[tuple[str, str | None], Need] = {}
    entries, model_pairs = [], set()
    for entry in raw["scenarios"]:
        plan = plans[entry["id"]]
        smoke = _smoke_entry(entry, plan, data_dir, needs)
        model_pair = (plan.teacher_spec.name, plan.student_spec.name)
        if model_pair in model_pairs:
            smoke["overrides"]["diagnostics"] = False
        model_pairs.add(model_pair)
        entries.append(smoke)
    _generate(needs, data_dir)
    copy = {**raw, "name": f"{suite.name}-smoke", "experiment": f"{suite.experiment}-smoke",
            "scenarios": entries, "budget": {"trials": 1}, "final": {"seeds": 1}}
    results.mkdir(parents=True, exist_ok=True)
    path = results / SUITE_FILE
    path.write_text(f"# Smoke copy of suite {ref!r}, written by otbench sweep --smoke\n"
                    + yaml.safe_dump(copy, sort_keys=False))
    return str(path), {**settings, "results_dir": str(results)}


def _smoke_entry(entry: Mapping[str, Any], plan: RunPlan, data_dir: Path,
                 needs: dict[tuple[str, str | None], Need]) -> dict[str, Any]:
    """One scenario entry of the copy: its tasks on generated data, its runs and teacher to
    one epoch, its teacher weights a generated file."""
    cfg = plan.config
    folder_task = any(DATASETS[spec.dataset].needs_root
                      for spec in (plan.task, plan.teacher_request.task) if spec is not None)
    size = cfg.image_size or (DEFAULT_FOLDER_SIZE if folder_task else None)
    overrides: dict[str, Any] = {"data_dir": str(data_dir), "download": False,
                                 "save_model": False, "train": {"epochs": 1},
                                 "image_size": _smallest_size(plan, size)}
    teacher: dict[str, Any] = {"train": {"epochs": 1}}
    if cfg.teacher.weights is not None:
        teacher["weights"] = str(_random_weights(plan, data_dir / "weights"))
    if cfg.teacher.task is not None:
        teacher["task"] = _needed(TaskSpec.parse(cfg.teacher.task), cfg.val_fraction, size,
                                  data_dir, needs)
    task = _needed(plan.task, cfg.val_fraction, size, data_dir, needs)
    if plan.teacher_request.task is not None and cfg.teacher.task is None:
        _needed(plan.teacher_request.task, cfg.val_fraction, size, data_dir, needs)
    return {**entry, "task": task, "teacher": deep_merge(entry.get("teacher", {}), teacher),
            "overrides": deep_merge(entry.get("overrides", {}), overrides)}


def _smallest_size(plan: RunPlan, size: int | None) -> int | None:
    """The smallest of :data:`SMOKE_SIZES` below the run's image side (None: the dataset's
    own) at which the teacher and the student forward through all their taps."""
    for candidate in SMOKE_SIZES:
        if size is not None and candidate >= size:
            break
        try:
            for spec in (plan.teacher_spec, plan.student_spec):
                model = build_model(spec.name, 2, plan.config.teacher.in_channels)
                feature_shapes(model, spec.taps, (plan.config.teacher.in_channels, candidate,
                                                  candidate))
        except (RuntimeError, ValueError):  # a feature map shrank below its kernel
            continue
        return candidate
    return size


def _needed(spec: TaskSpec, val_fraction: float, size: int | None, data_dir: Path,
            needs: dict[tuple[str, str | None], Need]) -> str:
    """Record what ``spec`` needs of its dataset; returns its spelling on generated data."""
    if spec.dataset in SHIPPED:
        return str(spec)
    if spec.dataset not in CIFAR_CLASSES and not DATASETS[spec.dataset].needs_root:
        raise ConfigError(f"--smoke generates {', '.join(CIFAR_CLASSES)} and image folders "
                          f"(and uses {', '.join(SHIPPED)} as shipped), not {spec.dataset!r} "
                          f"(task {str(spec)!r})")
    need = needs.setdefault((spec.dataset, spec.root), Need())
    need.classes = max(need.classes, FOLDER_CLASSES, max(spec.classes or (0,)) + 1)
    # Train and validation examples per class: validation is at least one example and at
    # most ceil(P·f/(1−f)) + 1 (the task carving's rounding) on top of per_class P.
    per = 2 if spec.per_class is None else (
        spec.per_class + math.ceil(spec.per_class * val_fraction / (1 - val_fraction)) + 1)
    need.train_per_class = max(need.train_per_class, per)
    if size is not None:
        need.image_size = size
    if spec.root is None:
        return str(spec)
    return str(replace(spec, root=str(_folder_path(spec.root, data_dir))))


def _folder_path(root: str, data_dir: Path) -> Path:
    """Where an image folder given as ``root`` is generated: under ``data_dir``, named by
    its path (absolute or relative)."""
    name = "_".join(part for part in Path(root).parts if part not in ("/", "\\", "..", "."))
    return data_dir / "folders" / name


def _generate(needs: Mapping[tuple[str, str | None], Need], data_dir: Path) -> None:
    for (dataset, root), need in needs.items():
        if root is not None:
            write_imagefolder(_folder_path(root, data_dir), need.classes, need.train_per_class,
                              test_per_class=1, size=need.image_size)
        else:
            write_cifar(CIFAR_CLASSES[dataset], data_dir, need.train_per_class,
                        test_per_class=1)


def _random_weights(plan: RunPlan, folder: Path) -> Path:
    """A randomly initialized state_dict of the teacher's model and head, seeded."""
    cfg = plan.config.teacher
    if cfg.num_classes is None:
        raise ConfigError("teacher.num_classes: --smoke needs it to stand in for "
                          f"teacher.weights={cfg.weights!r} (the weights' head size)")
    path = folder / f"{cfg.model}-{cfg.num_classes}-classes-{cfg.in_channels}-channels.pt"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        torch.save(build_model(cfg.model, cfg.num_classes, cfg.in_channels).state_dict(), path)
    return path
