"""MLflow tracking: batched metric writes reach the store however a run ends."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import pytest
from mlflow import MlflowClient

from otbench.benchmark import tracking
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
    (None, "FINISHED"), (RunStopped("pruned"), "KILLED"), (ValueError("boom"), "FAILED")])
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
