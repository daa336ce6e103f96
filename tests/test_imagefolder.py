"""ImageFolder tasks as users lay them out: train/val/test folders, classes by name or
position, the images' own size, two trees for a teacher and a student, broken files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from otbench.benchmark import cli
from otbench.benchmark.config import resolve_run_config
from otbench.benchmark.data import TaskSpec, clear_cache, load_task
from otbench.benchmark.data_warnings import small_data_warnings
from otbench.benchmark.runner import plan_run
from otbench.benchmark.tracking import default_tracking_uri
from otbench.errors import ConfigError


def make_tree(root: Path, counts: dict[str, dict[str, int]], size: tuple[int, int] = (12, 12),
              suffix: str = "png") -> Path:
    """``counts[split][class]`` random images of ``size`` under ``root/split/class/``; a
    split named ``""`` puts the class folders directly under ``root``."""
    rng = np.random.default_rng(len(str(root)))
    for split, classes in counts.items():
        for name, n in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{suffix}")
    return root


@pytest.fixture(autouse=True)
def fresh_sources() -> None:
    clear_cache()


def test_classes_by_name_in_the_order_given(tmp_path) -> None:
    root = make_tree(tmp_path / "pets", {"": {"bird": 6, "cat": 6, "dog": 6}})
    task = load_task(TaskSpec.parse(f"imagefolder={root}:dog,bird"))
    assert task.class_names == ("dog", "bird")
    by_position = load_task(TaskSpec.parse(f"imagefolder={root}:2,0"))
    assert by_position.class_names == ("dog", "bird")  # positions in the sorted folder list
    assert (task.train.x == by_position.train.x).all() and (task.val.y == by_position.val.y).all()
    assert str(TaskSpec.parse(f"imagefolder={root}:dog,bird@3")) == \
        f"imagefolder={root}:dog,bird@3"
    with pytest.raises(ConfigError, match=r"no class named 'cow'.*bird, cat, dog"):
        load_task(TaskSpec.parse(f"imagefolder={root}:dog,cow"))


def test_val_folder_is_the_validation_split(tmp_path) -> None:
    root = make_tree(tmp_path / "tree", {"train": {"a": 10, "b": 10, "c": 10},
                                         "val": {"a": 7, "b": 8, "c": 9},
                                         "test": {"a": 2, "b": 3, "c": 4}})
    task = load_task(TaskSpec.parse(f"imagefolder={root}:a,c"))
    assert (len(task.train), len(task.val), len(task.test)) == (20, 16, 6)
    few = load_task(TaskSpec.parse(f"imagefolder={root}:a,c@4"))
    assert (len(few.train), len(few.val)) == (8, 16)  # per_class: train only
    more = load_task(TaskSpec.parse(f"imagefolder={root}:a,c@6"))
    assert {bytes(x.numpy()) for x in few.train.x} <= {bytes(x.numpy()) for x in more.train.x}

    without_test = make_tree(tmp_path / "no_test", {"train": {"a": 10, "b": 10},
                                                    "val": {"a": 5, "b": 5}})
    task = load_task(TaskSpec.parse(f"imagefolder={without_test}"))
    assert len(task.val) == 10 and len(task.test) == 6 and len(task.train) == 14

    gap = make_tree(tmp_path / "gap", {"train": {"a": 4, "b": 4}, "val": {"a": 2}})
    with pytest.raises(ConfigError, match="val/ folder has no images of class 'b'"):
        load_task(TaskSpec.parse(f"imagefolder={gap}"))


def test_image_size_defaults_to_the_images_own_size(tmp_path, caplog) -> None:
    small = make_tree(tmp_path / "small", {"": {"a": 4, "b": 4}}, size=(28, 28))
    with caplog.at_level(logging.INFO, logger="otbench"):
        task = load_task(TaskSpec.parse(f"imagefolder={small}"))
    assert task.image_size == 28 and task.train.x.shape[-2:] == (28, 28)
    assert "image_size 28, the images' own size (28x28)" in caplog.text
    assert load_task(TaskSpec.parse(f"imagefolder={small}"), image_size=10).image_size == 10

    mixed = make_tree(tmp_path / "mixed", {"": {"a": 4}}, size=(20, 30))
    make_tree(mixed, {"": {"b": 4}}, size=(40, 40))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="otbench"):
        assert load_task(TaskSpec.parse(f"imagefolder={mixed}")).image_size == 224
    assert "image_size 224 by default, since its images have 2 different sizes" in caplog.text


def test_two_trees_are_different_tasks_whatever_their_class_positions() -> None:
    for scenario in ("transfer", "cross"):
        cfg = resolve_run_config(None, [f"scenario={scenario}", "task=imagefolder=/b:0-1",
                                        "teacher.task=imagefolder=/a:0-1"])
        assert plan_run(cfg).teacher_request.task.root == "/a"
    same = resolve_run_config(None, ["scenario=cross", "task=imagefolder=/a:0-1",
                                     "teacher.task=imagefolder=/a:0-1"])
    with pytest.raises(ConfigError, match="has the same classes"):
        plan_run(same)


@pytest.mark.parametrize("scenario", ["transfer", "cross"])
def test_teacher_on_one_tree_student_on_another(tmp_path, scenario) -> None:
    """A researcher's own data: a source tree and a target tree with their own class
    names, classes picked by name, validation from the target's val/."""
    source = make_tree(tmp_path / "source", {"train": {"car": 12, "ship": 12, "plane": 12},
                                             "test": {"car": 3, "ship": 3, "plane": 3}})
    target = make_tree(tmp_path / "target", {"train": {"cat": 12, "dog": 12, "fox": 12},
                                             "val": {"cat": 9, "dog": 9, "fox": 9},
                                             "test": {"cat": 3, "dog": 3, "fox": 3}})
    results = tmp_path / "results"
    code = cli.main(["run", "--quiet", "--results-dir", str(results),
                     "--set", f"scenario={scenario}", "--set", "student=cnn-s",
                     "--set", "teacher.model=cnn-s", "--set", "method=fitnets",
                     "--set", f"task=imagefolder={target}:fox,cat@8",
                     "--set", f"teacher.task=imagefolder={source}:ship,car",
                     "--set", "train.epochs=1", "--set", "teacher.train.epochs=1",
                     "--set", "train.batch_size=16"])
    assert code == 0
    client = MlflowClient(default_tracking_uri(results))
    runs = client.search_runs([client.get_experiment_by_name("otbench").experiment_id])
    student = next(r for r in runs if r.data.tags["stage"] == "run")
    assert student.data.params["image_size_used"] == "12"
    notes = student.data.tags["warnings"]
    assert "18 validation images" in notes  # fox and cat of val/, not 2 carved per class
    assert "16 training images at batch_size 16 make 1 optimizer step per epoch" in notes
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_small_data_warnings() -> None:
    assert small_data_warnings("t", 25, 100, 32)[0].startswith(
        "task t: 25 training images at batch_size 32 make 1 optimizer step per epoch")
    assert "5 validation images score accuracy in steps of 20 points" in \
        small_data_warnings("t", 100, 5, 32)[0]
    assert small_data_warnings("t", 64, 20, 32) == []


def test_truncated_image_is_an_error_naming_the_file(tmp_path, capsys) -> None:
    root = make_tree(tmp_path / "tree", {"": {"a": 6, "b": 6}})
    broken = root / "b" / "3.png"
    broken.write_bytes(broken.read_bytes()[:120])
    results = tmp_path / "results"
    code = cli.main(["run", "--quiet", "--results-dir", str(results),
                     "--set", f"task=imagefolder={root}", "--set", "teacher.model=cnn-s",
                     "--set", "train.epochs=1", "--set", "teacher.train.epochs=1"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"image file {str(broken)!r} cannot be read" in err and "Traceback" not in err
    client = MlflowClient(default_tracking_uri(results))
    experiment = client.get_experiment_by_name("otbench")
    running = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], "attributes.status = 'RUNNING'")
    assert running == []
