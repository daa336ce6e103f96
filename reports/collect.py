"""Read MLflow runs into one tidy DataFrame (one row per run), per-epoch histories, and a
run's diagnostics artifact.

Runs are read through ``MlflowClient`` against any tracking URI, so a team's server works the
same as the local SQLite file. Params come back as strings; they are cast back to numbers,
booleans and None here, once, so every table and plot sees real types.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per report

from mlflow import MlflowClient
from mlflow.entities import Experiment, Run, ViewType

from otbench.benchmark.tracking import download_artifact, tags_where
from otbench.errors import closest

from .errors import ReportError, UnknownExperimentError

#: Tags copied to columns of the same name, plus every ``version.*`` tag.
TAG_COLUMNS = ("stage", "scenario", "scenario_id", "task", "method", "seed", "study", "trial",
               "suite", "teacher", "student", "model", "git_commit", "otbench_version",
               "failure_reason", "protocol")
#: Run-config params that are not method hyper-parameters get this column prefix, so a param
#: named like a tag (``scenario``, ``seed``) never collides with the tag's column.
CONFIG_PREFIX = "config."
#: Hyper-parameters keep their param name (``params.weight``): the name a suite uses too.
HPARAM_PREFIX = "params."
#: Per-epoch metrics a report averages, and those it also plots.
TIME_KEYS = ("time/epoch", "time/regularizer")
HISTORY_KEYS = ("val/acc", *TIME_KEYS)
#: A run's diagnostics artifact (:mod:`otbench.benchmark.diagnostics`).
DIAGNOSTICS_ARTIFACT = "diagnostics.npz"

_INT = re.compile(r"^[+-]?\d+$")


def open_client(tracking_uri: str) -> MlflowClient:
    """A client on an existing store: reading must never create an empty SQLite file (which
    would then hide the real mistake, a wrong path, behind "unknown experiment")."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ReportError(f"no MLflow store at {path}: run a sweep first "
                              "(otbench sweep SUITE) or pass --tracking-uri / --results-dir")
    return MlflowClient(tracking_uri)


def experiment_names(client: MlflowClient) -> list[str]:
    """Every active experiment's name, following MLflow's pagination."""
    names: list[str] = []
    token: str | None = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        names.extend(e.name for e in page)
        token = page.token
        if not token:
            return sorted(names)


def find_experiment(client: MlflowClient, name: str) -> Experiment:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found
    names = experiment_names(client)
    guess = closest(name, names)
    hint = f" Did you mean {guess!r}?" if guess else ""
    listing = ", ".join(repr(n) for n in names) or "none"
    raise UnknownExperimentError(f"unknown experiment {name!r}.{hint} Existing experiments: "
                                 f"{listing}.")


def cast_value(text: str | None) -> Any:
    """A param or tag string back to the value it was logged from: int, float, bool, None, or
    the string itself (lists and mappings stay text: they are shown, not computed on).

    Deliberately not ``yaml.safe_load``: string params are logged raw, and YAML 1.1 would
    turn a string such as ``no`` or ``on`` into a boolean. Only ``null`` (how None is logged)
    is None: ``none`` is a real choice of some settings (OT's ``normalize``)."""
    if text is None:
        return None
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered == "null":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.match(stripped):
        return int(stripped)
    try:
        return float(stripped)
    except ValueError:
        return text


def tag_filter(stage: str | None, tags: Mapping[str, str] | None) -> str:
    """An MLflow filter string selecting a stage and exact tag values."""
    wanted = dict(tags or {})
    if stage is not None:
        wanted["stage"] = stage
    return tags_where(wanted)


def iter_runs(client: MlflowClient, experiment_id: str, filter_string: str = "",
              page_size: int = 1000) -> Iterator[Run]:
    """Every matching active run, following page tokens (a store returns at most
    ``page_size`` runs per call, 1000 at most on a server)."""
    token: str | None = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=page_size,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def run_row(run: Run) -> dict[str, Any]:
    """One run as a flat record: identity tags, cast params, latest metric values."""
    tags = run.data.tags
    row: dict[str, Any] = {"run_id": run.info.run_id, "run_name": run.info.run_name,
                           "status": run.info.status,
                           "start_time": pd.Timestamp(run.info.start_time, unit="ms"),
                           "parent_run_id": tags.get("mlflow.parentRunId")}
    for key in TAG_COLUMNS:
        raw = tags.get(key)
        row[key] = cast_value(raw) if key in ("seed", "trial") else raw
    row.update({key: value for key, value in tags.items() if key.startswith("version.")})
    for key, value in run.data.params.items():
        column = key if key.startswith(HPARAM_PREFIX) else CONFIG_PREFIX + key
        row[column] = cast_value(value)
    row.update(run.data.metrics)
    return row


def runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """The tidy table every report part reads: one row per run, always the identity
    columns (possibly empty), whatever the runs hold.

    ``entry`` is the suite entry a run belongs to (its ``scenario_id`` tag), else its
    scenario: several entries may share a scenario and a task (three teacher → student pairs
    distilled on CIFAR-100), and must not be averaged together."""
    rows = [run_row(run) for run in runs]
    base = ["run_id", "run_name", "status", "start_time", "parent_run_id", "entry",
            *TAG_COLUMNS]
    frame = pd.DataFrame(rows, dtype=object)  # infer per column below, after the ints
    for column in base:
        if column not in frame.columns:
            frame[column] = pd.Series([None] * len(frame), dtype=object)
    for column in frame.columns:
        if _all_ints(frame[column]):
            frame[column] = frame[column].astype("Int64")
    frame = frame.infer_objects()
    frame["entry"] = frame.scenario_id.where(frame.scenario_id.notna(), frame.scenario)
    return frame[base + [c for c in frame.columns if c not in base]]


def _all_ints(column: pd.Series) -> bool:
    """Integer values with gaps (a param a failed run never logged): kept as integers
    (nullable ``Int64``) rather than turned into floats by pandas."""
    values = column.dropna()
    return (not values.empty
            and values.map(lambda v: isinstance(v, int) and not isinstance(v, bool)).all())


def read_runs(tracking_uri: str, experiment: str, *, stages: Iterable[str] | None = None,
              tags: Mapping[str, str] | None = None, timings: bool = True,
              page_size: int = 1000) -> pd.DataFrame:
    """Runs of one experiment, optionally only some stages and exact tag values; with
    ``timings``, also each run's mean epoch time and regularizer share (one history request
    per run and key: leave it off for many runs on a remote server)."""
    client = open_client(tracking_uri)
    exp = find_experiment(client, experiment)
    selected = list(stages) if stages is not None else [None]
    runs = runs_frame(run for stage in selected
                      for run in iter_runs(client, exp.experiment_id, tag_filter(stage, tags),
                                           page_size))
    if not timings:
        return runs
    return add_timings(runs, metric_histories(client, runs.run_id, TIME_KEYS))


def metric_histories(client: MlflowClient, run_ids: Iterable[str],
                     keys: Iterable[str] = HISTORY_KEYS) -> pd.DataFrame:
    """Per-step values (step = epoch) as rows ``run_id, key, step, value``. A step logged twice
    (a resumed run) keeps its latest value."""
    run_ids, keys = list(run_ids), list(keys)
    store = _bulk_history_store(client)
    rows = (_bulk_history(store, run_ids, keys) if store is not None
            else _history_per_run(client, run_ids, keys))
    frame = pd.DataFrame(rows, columns=["run_id", "key", "step", "timestamp", "value"])
    frame = frame.sort_values(["run_id", "key", "step", "timestamp"])
    frame = frame.drop_duplicates(["run_id", "key", "step"], keep="last")
    return frame.drop(columns="timestamp").reset_index(drop=True)


def _bulk_history_store(client: MlflowClient) -> Any | None:
    """The client's store when it is a SQL store (SQLite, PostgreSQL) with the bulk history
    query the MLflow UI uses, else None. The one place otbench reaches into MLflow's private
    API (``MlflowClient`` does not expose the call); without it, the public per-run call."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return store if hasattr(store, "get_metric_history_bulk") else None


#: Runs per bulk history query, well under SQLite's limit of bound parameters.
BULK_RUNS = 500
HistoryRow = tuple[str, str, int, int, float]


def _bulk_history(store: Any, run_ids: list[str], keys: list[str]) -> list[HistoryRow]:
    """One query per key and :data:`BULK_RUNS` runs, instead of one per run and key."""
    return [(m.run_id, key, m.step, m.timestamp, m.value)
            for key in keys for start in range(0, len(run_ids), BULK_RUNS)
            for m in store.get_metric_history_bulk(run_ids[start:start + BULK_RUNS], key, None)]


def _history_per_run(client: MlflowClient, run_ids: list[str],
                     keys: list[str]) -> list[HistoryRow]:
    """The public per-run call, for stores without the bulk one (a tracking server)."""
    return [(run_id, key, m.step, m.timestamp, m.value)
            for run_id in run_ids for key in keys
            for m in client.get_metric_history(run_id, key)]


def add_timings(runs: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """Mean epoch time, mean regularizer time, and the regularizer's share of training time
    (sum over epochs of regularizer time / sum of epoch time)."""
    sums = histories.pivot_table(index="run_id", columns="key", values="value", aggfunc="sum")
    means = histories.pivot_table(index="run_id", columns="key", values="value", aggfunc="mean")
    timings = pd.DataFrame(index=sums.index)
    timings["time/epoch_mean"] = means.get("time/epoch")
    timings["time/regularizer_mean"] = means.get("time/regularizer")
    if "time/epoch" in sums and "time/regularizer" in sums:
        timings["time/overhead"] = sums["time/regularizer"] / sums["time/epoch"]
    else:
        timings["time/overhead"] = float("nan")
    out = runs.drop(columns=[c for c in timings.columns if c in runs.columns])
    return out.merge(timings, how="left", left_on="run_id", right_index=True)


def load_plans(client: MlflowClient, run_id: str
               ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[int, int]]:
    """The first and last plans per layer of one run's ``diagnostics.npz``, in the file's
    (configured) layer order, and the epochs they were recorded at."""
    with tempfile.TemporaryDirectory() as folder:
        path = download_artifact(client, run_id, DIAGNOSTICS_ARTIFACT, folder)
        with np.load(path) as data:
            epochs = data["epochs"]
            plans = {name.removeprefix("plan_first/"):
                     (data[name], data["plan_last/" + name.removeprefix("plan_first/")])
                     for name in data.files if name.startswith("plan_first/")}
    first, last = (int(epochs[0]), int(epochs[-1])) if len(epochs) else (0, 0)
    return plans, (first, last)
