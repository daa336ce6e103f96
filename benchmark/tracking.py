"""MLflow tracking: the only module that writes to MLflow.

Uses ``MlflowClient`` with explicit run ids (no global "active run"), so several runs, child
runs and worker processes never step on each other, and every run is closed with a status.
"""

from __future__ import annotations

import getpass
import importlib.util
import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import yaml
from filelock import FileLock

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no \r frames in logs

from mlflow import MlflowClient
from mlflow.entities import (
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    Param,
    Run,
    RunStatus,
    RunTag,
)
from mlflow.entities.source_type import SourceType
from mlflow.environment_variables import MLFLOW_TRACKING_URI
from mlflow.exceptions import MlflowException
from mlflow.utils import mlflow_tags
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

import otbench
from otbench.errors import ConfigError


class RunStopped(Exception):
    """Raised inside a run to stop it on purpose (e.g. pruned by a sweep): the run ends
    FINISHED (it did what was asked of it) with ``stopped_reason`` and :attr:`tags`; KILLED
    is kept for runs whose process was interrupted or died."""

    tags: ClassVar[Mapping[str, str]] = {}


#: MLflow's limit on a param value's length.
MAX_PARAM_LENGTH = 6000
#: MLflow's limit on the metrics of one ``log_batch``.
MAX_BATCH_METRICS = 1000
#: A run's metrics reach the store at least this often (see :class:`RunLogger`).
METRIC_FLUSH_SECONDS = 10.0
#: Experiment tag that makes MLflow 3's UI open an experiment in its model-training (runs)
#: view instead of guessing, and guessing GenAI, from an experiment it cannot classify.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


#: Key of the PostgreSQL advisory lock under which a process creates MLflow's tables.
SCHEMA_LOCK_KEY = 0x6F7462656E6368  # "otbench"


def default_tracking_uri(results_dir: str | Path) -> str:
    """A SQLite store under the results folder: no server needed on a laptop."""
    path = Path(results_dir).resolve() / "mlflow.db"
    return f"sqlite:///{path}"


def tracking_uri_for(tracking_uri: str | None, results_dir: str | Path) -> str:
    """The URI given (a flag or config key), else MLflow's own ``MLFLOW_TRACKING_URI``
    environment variable (set once for a cluster job), else SQLite under the results folder;
    a PostgreSQL URL gets the installed driver."""
    uri = tracking_uri or MLFLOW_TRACKING_URI.get()
    return with_installed_driver(uri) if uri else default_tracking_uri(results_dir)


def with_installed_driver(url: str) -> str:
    """SQLAlchemy 2.1 reads ``postgresql://`` as psycopg 3; use psycopg2 (the test extra)
    when it is the one installed, so the plain URL works either way."""
    if (url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None
            and importlib.util.find_spec("psycopg2") is not None):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def display_url(url: str) -> str:
    """``url`` with any password masked, for messages and ``--dry-run``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def client_for(tracking_uri: str) -> MlflowClient:
    """A client whose store exists; creating a fresh SQLite store is serialized by a lock,
    since two processes running MLflow's migrations on one new file crash."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db) + ".lock"):
            client = MlflowClient(tracking_uri)
            client.search_experiments(max_results=1)  # runs the migrations under the lock
        return client
    _open_store(tracking_uri)
    return MlflowClient(tracking_uri)


@cache
def _open_store(tracking_uri: str) -> None:
    """Check once per process that the store opens, as a clear error naming the flag. On
    PostgreSQL, MLflow's table creation runs under an advisory lock: machines starting
    together on an empty database otherwise race to create the same tables and all but one
    fail (MLflow itself does not serialize it)."""
    try:
        if tracking_uri.split(":", 1)[0].split("+", 1)[0] == "postgresql":
            engine = create_engine(tracking_uri)
            try:
                with engine.connect() as conn:  # session lock: released when it closes
                    conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                    MlflowClient(tracking_uri).search_experiments(max_results=1)
            finally:
                engine.dispose()
        else:
            MlflowClient(tracking_uri)
    except Exception as err:  # a bad URL, a missing driver, an unreachable server
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise ConfigError(f"--tracking-uri {display_url(tracking_uri)!r}: cannot open the "
                          f"MLflow store ({type(err).__name__}: {reason}); give a reachable "
                          f"store such as postgresql://USER@HOST/DB or sqlite:///PATH") from None


def experiment_id(client: MlflowClient, name: str, artifact_root: Path | None = None) -> str:
    """Get or create an experiment by name, tolerating a concurrent creator; it carries
    :data:`EXPERIMENT_TAGS` (added to an experiment made before they existed)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        location = artifact_root.resolve().as_uri() if artifact_root else None
        try:
            return client.create_experiment(name, artifact_location=location,
                                            tags=EXPERIMENT_TAGS)
        except Exception:  # another process created it between the two calls
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    for key, value in EXPERIMENT_TAGS.items():
        if found.tags.get(key) != value:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def download_artifact(client: MlflowClient, run_id: str, path: str, folder: str | Path) -> Path:
    """Download one artifact of a run into ``folder``. MLflow stores a local store's artifact
    location as an absolute path; when the results folder was moved or copied since, the
    artifact is read from the same place relative to the store's folder instead."""
    try:
        return Path(client.download_artifacts(run_id, path, str(folder)))
    except (OSError, MlflowException):
        moved = _moved_artifact_uri(client, run_id)
        if moved is None:
            raise
    from mlflow.artifacts import download_artifacts

    return Path(download_artifacts(artifact_uri=f"{moved}/{path}", dst_path=str(folder)))


def _moved_artifact_uri(client: MlflowClient, run_id: str) -> str | None:
    """A local run's artifact folder, found under the SQLite store's folder (the experiment's
    artifact root keeps its name, e.g. ``results/artifacts``), or None."""
    if not client.tracking_uri.startswith("sqlite:///"):
        return None
    run = client.get_run(run_id)
    root = client.get_experiment(run.info.experiment_id).artifact_location
    if not (root.startswith("file://") and run.info.artifact_uri.startswith(root)):
        return None
    old_root = Path(urlparse(root).path)
    relative = run.info.artifact_uri.removeprefix(root).lstrip("/")
    moved = Path(client.tracking_uri.removeprefix("sqlite:///")).parent / old_root.name
    candidate = moved / relative
    return candidate.as_uri() if candidate.is_dir() else None


def tags_where(tags: Mapping[str, Any]) -> str:
    """An MLflow filter string matching exact tag values (``""`` for none)."""
    return " and ".join(f"tags.`{key}` = {_quoted(str(value))}"
                        for key, value in sorted(tags.items()))


def _quoted(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ConfigError(f"cannot search MLflow for a tag value holding both quote kinds: "
                      f"{value!r}; rename it")


@cache
def git_commit() -> str:
    """The commit of the otbench source tree, with '-dirty' when it has local changes."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=source, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty.strip() else "")


@cache
def software_versions() -> dict[str, str]:
    """Versions that decide a run's numbers, recorded on every run."""
    import mlflow
    import numpy
    import optuna
    import ot
    import torch

    return {"otbench": otbench.__version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__, "pot": ot.__version__,
            "mlflow": mlflow.__version__, "optuna": optuna.__version__}


@cache
def context_tags() -> dict[str, str]:
    """MLflow's own context tags (user, source, git commit), which its UI shows as a run's
    User and Source and its search filters on; named by ``mlflow.utils.mlflow_tags``, the
    constants ``mlflow.start_run`` fills them from."""
    commit = git_commit()
    tags = {mlflow_tags.MLFLOW_USER: _user(), mlflow_tags.MLFLOW_SOURCE_NAME: "otbench",
            mlflow_tags.MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL)}
    if commit != "unknown":
        tags[mlflow_tags.MLFLOW_GIT_COMMIT] = commit.removesuffix("-dirty")
        tags[mlflow_tags.MLFLOW_GIT_DIRTY] = str(commit.endswith("-dirty")).lower()
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"


def standard_tags(stage: str, **tags: Any) -> dict[str, str]:
    """The tags every run carries: its stage plus whatever identifies it (the report's
    columns), with provenance (MLflow's context tags, git commit, software versions)."""
    versions = software_versions()
    base = {**context_tags(), "stage": stage, "git_commit": git_commit(),
            "otbench_version": versions["otbench"]}
    base.update({f"version.{k}": v for k, v in versions.items()})
    base.update({k: str(v) for k, v in tags.items() if v is not None})
    return base


class RunLogger:
    """Logs to one MLflow run; metrics are stamped with their step (the epoch).

    Metrics are written in batches, at most every ``flush_seconds`` and by :meth:`flush`
    (:func:`mlflow_run` flushes when the run ends, however it ends). Why: every write is a
    database transaction, which can take as long as a whole epoch of a small model, and many
    sweep workers share one database. ``flush_seconds=0`` writes at once.
    """

    def __init__(self, client: MlflowClient, run_id: str, flush_seconds: float = 0.0,
                 experiment_id: str | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.flush_seconds = flush_seconds
        self.pending: list[Metric] = []
        self.last_flush = time.monotonic()

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):  # MLflow's batch limit on params
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the pending metrics."""
        pending, self.pending = self.pending, []
        for start in range(0, len(pending), MAX_BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=pending[start:start + MAX_BATCH_METRICS])
        self.last_flush = time.monotonic()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, data: Mapping[str, Any], filename: str) -> None:
        """Write a YAML artifact (the resolved config, a summary...)."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / filename
            path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
            self.client.log_artifact(self.run_id, str(path))

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_pytorch_model(self, model: Any, step: int, name: str = "student") -> str:
        """``model`` as an MLflow 3 logged model of this run (the run's "Logged models"),
        which ``mlflow.pytorch.load_model(f"models:/{model_id}")`` loads; returns its id.
        Built with the client's LoggedModel calls rather than ``mlflow.pytorch.log_model``,
        which needs a global active run; pickled (the default ``pt2`` export needs an input
        example and fails on models it cannot trace), and the requirements given, not
        inferred (a second's import scan per model)."""
        import mlflow.pytorch

        if self.experiment_id is None:
            self.experiment_id = self.client.get_run(self.run_id).info.experiment_id
        logged = self.client.create_logged_model(self.experiment_id, name=name,
                                                 source_run_id=self.run_id)
        try:
            with tempfile.TemporaryDirectory() as folder, _quiet("mlflow.pytorch"):
                mlflow.pytorch.save_model(model, Path(folder) / "model",
                                          serialization_format="pickle",
                                          pip_requirements=model_requirements())
                self.client.log_model_artifacts(logged.model_id, str(Path(folder) / "model"))
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, step)])
        return logged.model_id


@cache
def model_requirements() -> list[str]:
    """What a logged student needs to load: torch, and otbench for its model classes."""
    return [f"{name}=={version(name)}" for name in ("torch", "otbench")]


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a logger's warnings for a moment: MLflow warns on every pickled model that
    pickles run code when loaded, which otbench's own models (loaded by their authors) are
    chosen to do."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True)
    return text.strip().removesuffix("...").strip()[:MAX_PARAM_LENGTH]


@contextmanager
def mlflow_run(tracking_uri: str, experiment: str, *, run_name: str, tags: Mapping[str, Any],
               artifact_root: Path | None = None,
               parent_run_id: str | None = None) -> Iterator[RunLogger]:
    """Open a run and always close it: FINISHED (also when stopped on purpose by
    :class:`RunStopped`, with its reason); KILLED on Ctrl-C; FAILED with the reason as the
    ``failure_reason`` tag."""
    client = client_for(tracking_uri)
    exp = experiment_id(client, experiment, artifact_root)
    run_tags = {k: str(v) for k, v in tags.items()}
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp, tags=run_tags, run_name=run_name)
    logger = RunLogger(client, run.info.run_id, METRIC_FLUSH_SECONDS, exp)
    try:
        yield logger
        logger.flush()
    except RunStopped as err:
        _end_run(logger, RunStatus.FINISHED, {**err.tags, "stopped_reason": str(err)})
        raise
    except KeyboardInterrupt as err:
        _end_run(logger, RunStatus.KILLED, {"stopped_reason": f"{type(err).__name__}: {err}"})
        raise
    except BaseException as err:
        _end_run(logger, RunStatus.FAILED, {"failure_reason": f"{type(err).__name__}: {err}"})
        raise
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))


def _end_run(logger: RunLogger, status: int, reason: Mapping[str, str]) -> None:
    """Close a run that stopped early, keeping the metrics it logged until then (unless the
    store itself is what failed)."""
    with suppress(MlflowException):
        logger.flush()
    logger.set_tags({k: v[:5000] for k, v in reason.items()})
    logger.client.set_terminated(logger.run_id, RunStatus.to_string(status))


def open_shared_run(tracking_uri: str, experiment: str, *, run_name: str,
                    tags: Mapping[str, Any], key: Mapping[str, str],
                    artifact_root: Path | None = None) -> str:
    """The id of the one live run tagged with ``key`` (e.g. a sweep's study run), created when
    absent, so a rerun or another worker finds it instead of adding a twin; it is RUNNING
    until :func:`close_run` (a rerun opens it again). Concurrent creators converge: each keeps
    the oldest match and deletes its own."""
    client = client_for(tracking_uri)
    exp = experiment_id(client, experiment, artifact_root)
    where = tags_where(key)

    def oldest() -> str | None:
        runs = client.search_runs([exp], where, max_results=1,
                                  order_by=["attributes.start_time ASC", "attributes.run_id ASC"])
        return runs[0].info.run_id if runs else None

    found = oldest()
    if found is not None:
        client.update_run(found, status=RunStatus.to_string(RunStatus.RUNNING))
        return found
    run_id = client.create_run(exp, tags={k: str(v) for k, v in tags.items()},
                               run_name=run_name).info.run_id
    winner = oldest() or run_id
    if winner != run_id:
        client.delete_run(run_id)
    return winner


def close_run(tracking_uri: str, run_id: str, *, params: Mapping[str, Any] | None = None,
              metrics: Mapping[str, float] | None = None, killed: bool = False) -> None:
    """Log a summary on a run opened by :func:`open_shared_run` and end it: FINISHED, or
    KILLED when the work under it was interrupted."""
    logger = RunLogger(client_for(tracking_uri), run_id)
    if params:
        logger.log_params(params)
    if metrics:
        logger.log_metrics(metrics)
    status = RunStatus.KILLED if killed else RunStatus.FINISHED
    logger.client.set_terminated(run_id, RunStatus.to_string(status))


def end_orphaned_run(tracking_uri: str, run_id: str, reason: str) -> bool:
    """Close a run whose process died while it was RUNNING: status KILLED, ``stopped_reason``
    tag. A run that already ended, or that lives in another tracking store (a worker with
    its own ``--tracking-uri``), is left as it is; returns whether this call closed it."""
    return _kill_if_running(client_for(tracking_uri), run_id, reason)


def _kill_if_running(client: MlflowClient, run_id: str, reason: str) -> bool:
    try:
        status = client.get_run(run_id).info.status
    except MlflowException:
        return False
    if status != RunStatus.to_string(RunStatus.RUNNING):
        return False
    client.set_tag(run_id, "stopped_reason", reason[:5000])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
    return True


def end_orphaned_runs(tracking_uri: str, experiment: str, tags: Mapping[str, str],
                      reason: str) -> list[str]:
    """Close every RUNNING run of ``experiment`` carrying ``tags`` (see
    :func:`end_orphaned_run`); for callers that know no live process owns such a run (e.g. it
    holds the lock those runs were made under). Returns the ids closed."""
    client = client_for(tracking_uri)
    return [run.info.run_id for run in running_runs(tracking_uri, experiment, tags)
            if _kill_if_running(client, run.info.run_id, reason)]


def running_runs(tracking_uri: str, experiment: str, tags: Mapping[str, str]) -> list[Run]:
    """The RUNNING runs of ``experiment`` carrying ``tags`` (at most 1000)."""
    client = client_for(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    where = f"attributes.status = 'RUNNING' and {tags_where(tags)}"
    return client.search_runs([found.experiment_id], where, max_results=1000)
