"""The runner end to end on digits: scenarios, MLflow records, teacher cache, bad input."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from otbench.benchmark import cli, tracking
from otbench.benchmark.config import resolve_run_config
from otbench.benchmark.runner import execute_run, plan_run
from otbench.benchmark.teachers import TeacherCacheError, cache_path
from otbench.benchmark.tracking import default_tracking_uri
from otbench.benchmark.train import NonFiniteLossError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAST = ["train.epochs=2", "teacher.train.epochs=2"]

#: The pairings the runner issue asks for; each must train and leave an MLflow run.
COMBOS = [("transfer", m) for m in ("finetune", "l2sp", "fitnets", "at", "ot")] + \
         [("distill", m) for m in ("kd", "fitnets", "at", "ot")] + \
         [("cross", m) for m in ("fitnets", "at", "ot")]


def config(scenario: str, results: Path, *overrides: str):
    return resolve_run_config(CONFIGS / f"{scenario}.yaml",
                              [*FAST, f"results_dir={results}", *overrides])


def runs(results: Path, stage: str | None = None):
    client = MlflowClient(default_tracking_uri(results))
    experiment = client.get_experiment_by_name("otbench")
    found = client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in found if stage is None or r.data.tags.get("stage") == stage]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results folder shared by the module, so each teacher trains once."""
    return tmp_path_factory.mktemp("results")


@pytest.mark.parametrize(("scenario", "method"), COMBOS)
def test_each_scenario_and_method_trains_and_is_recorded(results, scenario, method) -> None:
    result = execute_run(config(scenario, results, f"method={method}", "evaluate_test=true"),
                         progress=False)
    assert 0.0 <= result.val_acc <= 1.0 and 0.0 <= result.test_acc <= 1.0
    run = MlflowClient(default_tracking_uri(results)).get_run(result.run_id)
    tags, params = run.data.tags, run.data.params
    assert run.info.status == "FINISHED"
    assert {k: tags[k] for k in ("scenario", "method", "stage", "seed")} == {
        "scenario": scenario, "method": method, "stage": "run", "seed": "0"}
    assert tags["git_commit"] and tags["otbench_version"] and tags["task"]
    assert params["method"] == method and params["train.epochs"] == "2"
    metrics = run.data.metrics
    for name in ("train/loss", "train/task", "val/acc", "time/epoch", "time/regularizer",
                 "val/acc_final", "test/acc"):
        assert name in metrics, name
    if method not in ("finetune", "kd", "l2sp"):
        assert any(k.startswith(f"train/{method}/") for k in metrics), sorted(metrics)
    history = MlflowClient(default_tracking_uri(results)).get_metric_history(result.run_id,
                                                                             "val/acc")
    assert sorted(m.step for m in history) == [1, 2]
    artifacts = [a.path for a in MlflowClient(default_tracking_uri(results)).list_artifacts(
        result.run_id)]
    assert "config.yaml" in artifacts


def test_teachers_are_trained_once_and_reused(results) -> None:
    execute_run(config("cross", results, "method=ot", "seed=1"), progress=False)
    teacher_runs = runs(results, "teacher")
    # one teacher on digits 0-4 (transfer and cross share it), one on all digits (distill)
    assert sorted(r.data.tags["task"] for r in teacher_runs) == ["digits", "digits:0-4"]
    assert len(list((results / "teachers").glob("*.pt"))) == 2


def test_a_teacher_run_left_running_by_a_dead_process_is_closed_on_retraining(tmp_path) -> None:
    cfg = config("cross", tmp_path, "method=ot")
    path = cache_path(plan_run(cfg).teacher_request, tmp_path)
    client = MlflowClient(default_tracking_uri(tmp_path))
    experiment = tracking.experiment_id(client, "otbench")
    dead = client.create_run(experiment, tags={"stage": "teacher",
                                               "teacher_cache": str(path)}).info.run_id
    other = client.create_run(experiment, tags={"stage": "teacher",
                                                "teacher_cache": str(path) + "x"}).info.run_id
    execute_run(cfg, progress=False)
    status = {r.info.run_id: r.info.status for r in runs(tmp_path, "teacher")}
    assert status.pop(dead) == "KILLED" and status.pop(other) == "RUNNING"
    assert list(status.values()) == ["FINISHED"]  # the teacher trained now
    assert "process died" in client.get_run(dead).data.tags["stopped_reason"]


@pytest.mark.parametrize("params", [[], ["params.plan_lag=1"]])
def test_training_is_reproducible_for_a_seed(tmp_path, params: list[str]) -> None:
    first = execute_run(config("cross", tmp_path, "method=ot", *params), progress=False)
    second = execute_run(config("cross", tmp_path, "method=ot", *params), progress=False)
    assert [h.train_loss for h in first.history] == [h.train_loss for h in second.history]


def test_corrupt_teacher_cache_is_an_error_naming_the_file(tmp_path) -> None:
    execute_run(config("cross", tmp_path, "method=finetune"), progress=False)
    cache = next((tmp_path / "teachers").glob("*.pt"))
    cache.write_bytes(b"not a checkpoint")
    with pytest.raises(TeacherCacheError, match=rf"{cache.name}.*corrupt.*delete it"):
        execute_run(config("cross", tmp_path, "method=ot"), progress=False)


def test_mismatched_teacher_cache_is_an_error(tmp_path) -> None:
    execute_run(config("cross", tmp_path, "method=finetune"), progress=False)
    cache = next((tmp_path / "teachers").glob("*.pt"))
    payload = torch.load(cache, weights_only=True)
    payload["key"]["seed"] = 123
    torch.save(payload, cache)
    with pytest.raises(TeacherCacheError, match="another config"):
        execute_run(config("cross", tmp_path, "method=ot"), progress=False)


def test_nan_loss_stops_the_run_naming_the_term(tmp_path) -> None:
    # lr 1 so that it diverges whatever the momentum (plain momentum survives lr 0.05 here)
    cfg = config("cross", tmp_path, "method=ot", "params.weight=1e38", "train.epochs=3",
                 "train.lr=1")
    with pytest.raises(NonFiniteLossError, match=r"'ot/stage\d'|'task'|total loss"):
        execute_run(cfg, progress=False)
    failed = [r for r in runs(tmp_path, "run") if r.info.status == "FAILED"]
    assert len(failed) == 1 and "NonFiniteLossError" in failed[0].data.tags["failure_reason"]


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "trian.lr=0.1"], "trian: unknown key; did you mean 'train'"),
    (["--set", "train.lr=fast"], "train.lr: Input should be a valid number"),
    (["--set", "method=fitnet"], "unknown method 'fitnet'. Did you mean 'fitnets'"),
    (["--set", "student=cnn-x"], "unknown model 'cnn-x'. Did you mean 'cnn-s'"),
    (["--set", "task=digitz:0-4"], "digitz"),
    (["--set", "params.wieght=1", "--set", "method=ot"], "Did you mean 'weight'"),
    ([str(CONFIGS / "cross.yaml"), "--set", "method=kd"],
     "method 'kd' does not apply to scenario 'cross'.*same label set"),
    ([str(CONFIGS / "cross.yaml"), "--set", "method=l2sp"],
     "method 'l2sp' does not apply to scenario 'cross'.*same architecture"),
    ([str(CONFIGS / "transfer.yaml"), "--set", "student=cnn-s"],
     "student must be the teacher's model"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"],
     "device"),
])
def test_bad_configs_exit_2_and_write_nothing(tmp_path, capsys, args, message) -> None:
    code = cli.main(["run", *args, "--results-dir", str(tmp_path / "results")])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "results").exists()


def test_print_config_shows_the_resolved_config(capsys) -> None:
    assert cli.main(["run", str(CONFIGS / "cross.yaml"), "--set", "train.lr=0.2",
                     "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "scenario: cross" in out and "lr: 0.2" in out and "method: ot" in out


def test_methods_command_lists_every_method(capsys) -> None:
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("finetune", "ot", "l2sp", "fitnets", "at", "kd"):
        assert f"\n{name} " in "\n" + out
    assert "needs same label set" in out and "weight=0.1 [0.0001, 10] log" in out


def test_run_cli_prints_the_result(tmp_path, capsys) -> None:
    sets = [arg for override in FAST for arg in ("--set", override)]
    code = cli.main(["run", str(CONFIGS / "cross.yaml"), "--quiet", "--test", "--results-dir",
                     str(tmp_path), *sets])
    assert code == 0
    out = capsys.readouterr().out
    assert "cross ot on digits:5-9@10" in out and "test acc" in out
    (run,) = runs(tmp_path, "run")
    assert not math.isnan(run.data.metrics["test/acc"])


def test_the_command_line_and_its_parser_import_nothing_heavy() -> None:
    """Every process a command spawns (sweep workers) imports the ``otbench`` script, and
    ``otbench --help`` builds every command's parser: neither loads a command's work."""
    code = ("import sys, otbench.benchmark.cli as cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'mlflow', "
            "'optuna', 'matplotlib', 'torchvision', 'ot', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture
def unwritable(tmp_path: Path) -> Path:
    """A results folder nobody can write: read-only by mode, or, for root (whom modes do not
    stop), a folder inside sysfs, where the kernel refuses new files."""
    if os.geteuid() == 0:
        folder = Path("/sys/otbench-results")
    else:
        folder = tmp_path / "results"
        folder.mkdir()
        folder.chmod(0o555)
    try:
        folder.mkdir(exist_ok=True)
        (folder / "probe").touch()
    except OSError:
        return folder
    pytest.fail(f"could not make an unwritable folder ({folder} accepts files)")


@pytest.mark.parametrize("command", ["run", "teacher"])
def test_unwritable_results_folder_is_a_clear_error(unwritable, capsys, command) -> None:
    code = cli.main([command, str(CONFIGS / "cross.yaml"), "--quiet", "--results-dir",
                     str(unwritable), "--tracking-uri", f"sqlite:///{unwritable}/mlflow.db",
                     *[arg for pair in FAST for arg in ("--set", pair)]])
    err = capsys.readouterr().err
    assert code == 2
    assert f"results_dir {str(unwritable)!r}: cannot write there" in err
    assert "--results-dir" in err


def test_teacher_command_needs_no_plugin_for_the_run_method(tmp_path, capsys) -> None:
    code = cli.main(["teacher", str(CONFIGS / "cross.yaml"), "--quiet", "--set",
                     "method=cosine", "--results-dir", str(tmp_path),
                     *[arg for pair in FAST for arg in ("--set", pair)]])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("teacher cnn-l on digits:0-4: ")


def test_print_config_of_a_transfer_shows_the_student_it_trains(capsys) -> None:
    assert cli.main(["run", str(CONFIGS / "transfer.yaml"), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["student"] == "cnn-l"  # the teacher's


def test_help_answers_in_under_two_seconds() -> None:
    """The command's own cost beyond starting Python, at its best of three alternated tries
    (this machine is shared: a bare interpreter alone may take a second under load)."""
    def seconds(*args: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=True)
        return time.perf_counter() - start

    costs = [seconds("-m", "otbench.benchmark.cli", "--help") - seconds("-c", "pass")
             for _ in range(3)]
    assert min(costs) < 2.0
    shown = subprocess.run([sys.executable, "-m", "otbench.benchmark.cli", "--help"],
                           capture_output=True, text=True, check=True).stdout
    assert all(command in shown for command in ("run", "sweep", "report", "perf", "methods",
                                                "analyze"))
