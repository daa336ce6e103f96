"""MLflow tracking: batched metric writes reach the store however a run ends; MLflow's own
conventions (context tags, experiment kind, ``MLFLOW_TRACKING_URI``) are followed."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from otbench.benchmark import tracking
from otbench.benchmark.cli import main
from otbench.benchmark.tracking import RunLogger, RunStopped, mlflow_run
from otbench.errors import ConfigError


def uri_in(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def open_run(tmp_path: Path) -> tuple[MlflowClient, str]:
    """A client and a new run of experiment ``e``, outside :func:`mlflow_run`."""
    client = tracking.client_for(uri_in(tmp_path))
    return client, client.create_run(tracking.experiment_id(client, "e")).info.run_id


def only_run(client: MlflowClient):
    (run,) = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    return run


@pytest.mark.parametrize(("error", "status"), [
    (None, "FINISHED"), (RunStopped("pruned"), "FINISHED"), (KeyboardInterrupt(), "KILLED"),
    (ValueError("boom"), "FAILED")])
def test_metrics_held_back_are_written_when_the_run_ends(tmp_path, monkeypatch, error,
                                                         status) -> None:
    monkeypatch.setattr(tracking, "METRIC_FLUSH_SECONDS", 3600.0)
    uri = uri_in(tmp_path)
    client = MlflowClient(uri)
    seen_during_run = []
    expected = pytest.raises(type(error)) if error else nullcontext()
    with expected, mlflow_run(uri, "e", run_name="r", tags={}) as run:
        for epoch in range(3):
            run.log_metrics({"val/acc": 0.5 + epoch / 10}, step=epoch)
        seen_during_run = steps_of(client, run.run_id, "val/acc")
        if error:
            raise error
    ended = only_run(client)
    assert seen_during_run == []  # one write at the end, not one per epoch
    assert ended.info.status == status
    assert steps_of(client, ended.info.run_id, "val/acc") == [0, 1, 2]


def test_metrics_are_written_once_the_flush_interval_has_passed(tmp_path) -> None:
    client, run_id = open_run(tmp_path)
    logger = RunLogger(client, run_id, flush_seconds=3600.0)
    logger.log_metrics({"a": 1.0}, step=0)
    assert steps_of(client, run_id, "a") == []
    logger.last_flush -= 3600.0
    logger.log_metrics({"a": 2.0}, step=1)
    assert steps_of(client, run_id, "a") == [0, 1]


def test_a_logger_without_interval_writes_at_once_in_batches_mlflow_accepts(tmp_path) -> None:
    client, run_id = open_run(tmp_path)
    many = {f"m{i}": float(i) for i in range(tracking.MAX_BATCH_METRICS + 5)}
    RunLogger(client, run_id).log_metrics(many, step=4)
    logged = client.get_run(run_id).data.metrics
    assert len(logged) == len(many) and logged["m1004"] == 1004.0


def test_tag_filters_find_values_with_quotes_and_refuse_both_kinds(tmp_path) -> None:
    client = tracking.client_for(uri_in(tmp_path))
    experiment = tracking.experiment_id(client, "e")
    wanted = client.create_run(experiment, tags={"path": "/data/o'brien"}).info.run_id
    client.create_run(experiment, tags={"path": "/data/obrien"})
    found = client.search_runs([experiment], tracking.tags_where({"path": "/data/o'brien"}))
    assert [r.info.run_id for r in found] == [wanted]
    with pytest.raises(ConfigError, match="both quote kinds"):
        tracking.tags_where({"path": "a'b\"c"})


# --------------------------------------------------------------------------- environment
#: The smallest real run: one epoch of a cnn-s teacher and student on digits.
TINY_RUN = ("--set", "scenario=cross", "--set", "task=digits:5-9@10", "--set", "student=cnn-s",
            "--set", "teacher.model=cnn-s", "--set", "teacher.task=digits:0-4",
            "--set", "teacher.train.epochs=1", "--set", "train.epochs=1", "--set", "method=ot")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def mlflow_server(folder: Path, wait_s: float = 240) -> Iterator[str]:
    """A local ``mlflow server`` (SQLite backend, its own artifact folder) on a free port of
    127.0.0.1; its URL once it answers, and it is stopped (with its workers) at the end."""
    port = free_port()
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "server-artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not answer in time"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_a_run_goes_to_mlflow_tracking_uri_and_its_log_has_no_progress_frames(
        tmp_path: Path) -> None:
    results = tmp_path / "results"
    with mlflow_server(tmp_path) as url:
        log = tmp_path / "run.log"
        with log.open("w") as out:  # `otbench run … > run.log 2>&1`
            done = subprocess.run(
                [sys.executable, "-m", "otbench.benchmark.cli", "run", *TINY_RUN,
                 "--results-dir", str(results)], stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "MLFLOW_TRACKING_URI": url,
                     "MLFLOW_DISABLE_TELEMETRY": "true"}, timeout=600, check=False)
        text = log.read_text()
        assert done.returncode == 0, text[-3000:]
        assert "\r" not in text
        found = re.search(r"^run (\w+): cross ot", text, re.MULTILINE)
        assert found is not None, text[-3000:]
        run = MlflowClient(url).get_run(found.group(1))
        assert run.info.status == "FINISHED" and "val/acc_final" in run.data.metrics
    assert results.is_dir()  # the teacher's cache
    assert not (results / "mlflow.db").exists()


def test_environment_variables_name_the_stores_when_no_flag_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    monkeypatch.setenv("OTBENCH_OPTUNA_STORAGE", "postgresql://otbench@db.example/optuna")
    assert main(["sweep", "quick", "--dry-run", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tracking: http://tracking.example:5000" in out
    assert "storage: postgresql://otbench@db.example/optuna" in out
    assert tracking.tracking_uri_for("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def test_print_config_shows_the_methods_resolved_parameters(
        capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--set", "method=kd", "--set", "scenario=distill", "--set",
                 "task=digits", "--set", "student=cnn-s", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["params"] == {"alpha": 0.9, "temperature": 4.0}


def test_runs_carry_mlflows_context_tags_and_the_experiment_opens_as_model_training(
        tmp_path: Path) -> None:
    uri = uri_in(tmp_path)
    with mlflow_run(uri, "e", run_name="r", tags=tracking.standard_tags("run")):
        pass
    client = MlflowClient(uri)
    run = only_run(client)
    assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.name"] == "otbench"
    assert run.data.tags["mlflow.source.git.commit"] == \
        tracking.git_commit().removesuffix("-dirty")
    assert client.get_experiment_by_name("e").tags["mlflow.experimentKind"] == \
        "custom_model_development"


def test_artifacts_are_found_in_a_moved_results_folder(tmp_path: Path) -> None:
    """A results folder copied elsewhere serves its own artifacts, not the old place's."""
    before = tmp_path / "before" / "results"
    with mlflow_run(f"sqlite:///{before / 'mlflow.db'}", "e", run_name="r", tags={},
                    artifact_root=before / "artifacts") as run:
        run.log_dict({"answer": 42}, "config.yaml")
    after = tmp_path / "after"
    before.parent.rename(after)
    client = MlflowClient(f"sqlite:///{after / 'results' / 'mlflow.db'}")
    folder = tmp_path / "download"
    folder.mkdir()
    path = tracking.download_artifact(client, run.run_id, "config.yaml", folder)
    assert yaml.safe_load(path.read_text()) == {"answer": 42}
    assert path.is_relative_to(folder)
