"""``otbench sweep SUITE --smoke``: generated data in the real formats, and the paper-scale
suites run end to end on the CPU."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision.datasets as tvd
import yaml
from mlflow.tracking import MlflowClient

from otbench.benchmark.cli import main
from otbench.benchmark.data import TaskSpec, clear_cache, load_task
from otbench.benchmark.data.generated import GENERATED_MARKER, write_cifar, write_imagefolder
from otbench.errors import ConfigError
from otbench.reports import report_dir
from otbench.sweeps.smoke import SMOKE_SIZES, prepare_smoke
from otbench.sweeps.suite import load_suite

PAPER_SCALE = ["cifar100-distill", "imagenet-transfer"]


@pytest.fixture(autouse=True)
def fresh_sources() -> None:
    clear_cache()  # the openers cache per data folder; each test writes its own


def test_generated_cifar100_is_read_by_torchvision_only_with_the_marker(tmp_path: Path) -> None:
    folder = write_cifar("CIFAR100", tmp_path, train_per_class=2, test_per_class=1)
    (folder / GENERATED_MARKER).unlink()
    with pytest.raises(ConfigError, match="corrupted"):  # md5 of the official archive
        load_task(TaskSpec.parse("cifar100"), data_dir=tmp_path)
    (folder / GENERATED_MARKER).touch()
    clear_cache()
    task = load_task(TaskSpec.parse("cifar100:3,7"), data_dir=tmp_path)
    assert (task.num_classes, len(task.train), len(task.val), len(task.test)) == (2, 2, 2, 2)
    with open(folder / "train", "rb") as batch:
        raw = pickle.load(batch, encoding="latin1")  # as torchvision opens it
    assert raw["data"].shape == (200, 3072) and sorted(set(raw["fine_labels"])) == [*range(100)]


def test_generated_image_folder_has_train_and_test_trees_of_jpegs(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "birds", num_classes=3, train_per_class=4,
                             test_per_class=1, size=40)
    assert len(list(root.glob("train/*/*.jpg"))) == 12
    assert tvd.ImageFolder(str(root / "test")).classes == ["class_000", "class_001",
                                                           "class_002"]
    task = load_task(TaskSpec.parse(f"imagefolder={root}@3"), image_size=16)
    assert task.train.x.shape == (9, 3, 16, 16) and len(task.test) == 3


def test_smoke_copy_keeps_every_study_and_replaces_data_and_weights(tmp_path: Path) -> None:
    """The copy of imagenet-transfer: same entries, methods and models; image folders and the
    teacher's ImageNet weights generated; budgets cut; nothing downloaded."""
    ref, settings = prepare_smoke("imagenet-transfer", {"results_dir": str(tmp_path)})
    original, smoke = load_suite("imagenet-transfer"), load_suite(ref, settings)
    assert [(s.entry, s.method) for s in smoke.studies] == \
           [(s.entry, s.method) for s in original.studies]
    assert (smoke.name, smoke.budget.trials, smoke.final.seeds) == \
           ("imagenet-transfer-smoke", 1, 1)
    for spec in smoke.studies:
        cfg = spec.plan.config
        assert (cfg.train.epochs, cfg.download, cfg.image_size) == (1, False, SMOKE_SIZES[0])
        assert Path(cfg.teacher.weights).is_file()
        assert set(torch.load(cfg.teacher.weights, weights_only=True)) == \
               set(original.studies[0].plan.teacher_spec.builder(
                   num_classes=1000, in_channels=3).state_dict())
        root = Path(spec.plan.task.root)
        assert root.is_relative_to(tmp_path) and (root / GENERATED_MARKER).is_file()
        per_class = spec.plan.task.per_class or 1
        assert len(list((root / "train" / "class_000").glob("*.jpg"))) > per_class
    written = yaml.safe_load(Path(ref).read_text())
    assert written["budget"] == {"trials": 1}


def test_smoke_refuses_dry_run_and_datasets_it_cannot_generate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "quick", "--smoke", "--dry-run", "--results-dir", str(tmp_path)]) == 2
    assert "drop --dry-run" in capsys.readouterr().err
    suite = tmp_path / "mnist.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "m", "budget": {"trials": 1},
        "scenarios": [{"id": "a", "scenario": "distill", "task": "mnist", "student": "cnn-s",
                       "methods": ["kd"]}]}))
    with pytest.raises(ConfigError, match="not 'mnist'"):
        prepare_smoke(str(suite), {"results_dir": str(tmp_path / "r")})


def entry_and_method(study: str) -> tuple[str, str]:
    """A study's suite entry and method: its task differs in a smoke run, where an image
    folder's path points to the generated data."""
    parts = study.split("/")
    return parts[1], parts[-1]


@pytest.mark.parametrize("suite", PAPER_SCALE)
def test_paper_scale_suite_runs_end_to_end_in_smoke_mode(tmp_path: Path, suite: str) -> None:
    """Teachers, one search trial and one final seed of every study, and the report: every
    model pair, tap, layer pairing and method of the suite, on the CPU."""
    assert main(["sweep", suite, "--smoke", "--results-dir", str(tmp_path), "--device", "cpu",
                 "--quiet"]) == 0
    studies = {entry_and_method(spec.name) for spec in load_suite(suite).studies}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"{suite}-smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    finished: dict[str, list[str]] = {}
    for run in runs:
        tags = run.data.tags
        if tags.get("stage") in ("trial", "final"):
            assert run.info.status == "FINISHED", tags.get("study")
            finished.setdefault(entry_and_method(tags["study"]), []).append(tags["stage"])
    assert {name: sorted(stages) for name, stages in finished.items()} == \
           {name: ["final", "trial"] for name in studies}
    assert (report_dir(tmp_path, f"{suite}-smoke") / "report.html").is_file()
