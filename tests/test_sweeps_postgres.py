"""Distributed sweeps: two `otbench sweep` commands (two "machines") against one real
PostgreSQL server share the studies; no trial is lost or run twice.

The server is Debian's ``postgresql`` package (``apt-get install -y postgresql``), started
here with ``initdb``/``pg_ctl`` in a temporary folder on a free port. PostgreSQL refuses to
run as root, so as root it runs as the ``postgres`` user. A server that cannot start fails
the test: the distributed mode is a promise of the project, not an optional extra.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from sqlalchemy import create_engine, text
from test_sweeps import (
    FINISHED,
    OT,
    TINY,
    subprocess_env,
    sweep_command,
    write_suite,
)

from otbench.benchmark import cli
from otbench.benchmark.tracking import tracking_uri_for
from otbench.sweeps.studies import with_installed_driver

FITNETS = "tiny/cross/digits:5-9@10/fitnets"


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not found or not shutil.which("pg_ctl", path=found[-1]):
        pytest.fail("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl); "
                    "install it with `apt-get install -y postgresql`")
    return Path(found[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server with one database; stopped and removed afterwards."""
    binaries = postgres_bin()
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    folder = Path(tempfile.mkdtemp(prefix="otbench-pg-"))
    data = folder / "data"
    if as_root:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()

    def pg(tool: str, *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([*run_as, str(binaries / tool), *args], capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            log = folder / "server.log"
            pytest.fail(f"{tool} failed ({done.returncode}): {done.stderr}\n"
                        f"{log.read_text() if log.exists() else ''}")
        return done

    pg("initdb", "-D", str(data), "-U", "otbench", "--auth=trust", "-E", "UTF8")
    pg("pg_ctl", "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
       "-o", f"-p {port} -h 127.0.0.1 -k {folder}", "start")
    try:
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "otbench", "optuna")
        yield f"postgresql://otbench@127.0.0.1:{port}/optuna"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def two_machines(tmp_path: Path, suite: Path, storage: str, tracking: str) -> list:
    """Start the same sweep as two "machines" at once; both must exit 0. Returns the runs."""
    commands = [sweep_command(suite, tmp_path / f"machine{i}", "--storage", storage,
                              "--tracking-uri", tracking) for i in (1, 2)]
    machines = [subprocess.Popen(c, env=subprocess_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for c in commands]
    for machine in machines:
        _, err = machine.communicate(timeout=600)
        assert machine.returncode == 0, err
    client = MlflowClient(with_installed_driver(tracking))
    return client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                              max_results=5000)


def test_two_machines_share_studies_through_postgres(tmp_path, postgres_url) -> None:
    suite = write_suite(tmp_path, budget={"trials": 4},
                        scenarios=[{**TINY["scenarios"][0], "methods": ["ot", "fitnets"]}])
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a team's shared MLflow store
    runs = two_machines(tmp_path, suite, postgres_url, tracking)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for study in (OT, FITNETS):
        trials = optuna.load_study(study_name=study,
                                   storage=with_installed_driver(postgres_url)).trials
        done = [t for t in trials if t.state in FINISHED]
        assert len(done) == 4  # the budget, not 4 per machine
        assert len({t.params["weight"] for t in done}) == 4  # no point tried twice
        mine = [r for r in runs if r.data.tags.get("study") == study]
        parents = [r for r in mine if r.data.tags["stage"] == "study"]
        assert len(parents) == 1  # both machines found the same parent run
        children = [r for r in mine if r.data.tags["stage"] == "trial"]
        assert sorted(int(r.data.tags["trial"]) for r in children) == \
            sorted(t.number for t in done)  # one MLflow run per trial, none lost
        assert {r.data.tags["mlflow.parentRunId"] for r in children} == \
            {parents[0].info.run_id}
        finals = [r for r in mine if r.data.tags["stage"] == "final"]
        assert sorted(int(r.data.tags["seed"]) for r in finals) == [0, 1]


def empty_database(server_url: str, name: str) -> str:
    """A new, empty database on the fixture's server; its URL as the README writes it."""
    engine = create_engine(with_installed_driver(server_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def test_two_machines_start_together_on_empty_databases(tmp_path, postgres_url) -> None:
    """The README's "same command on every machine", both starting at once on empty Optuna
    and MLflow databases: the one that loses the race to create MLflow's tables waits for
    them instead of dying with a raw UniqueViolation."""
    storage = empty_database(postgres_url, "optuna_fresh")
    tracking = empty_database(postgres_url, "mlflow_fresh")
    suite = write_suite(tmp_path, budget={"trials": 2}, final={"seeds": 1},
                        scenarios=[{**TINY["scenarios"][0], "methods": ["ot"]}])
    runs = two_machines(tmp_path, suite, storage, tracking)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    trials = optuna.load_study(study_name=OT, storage=with_installed_driver(storage)).trials
    done = [t for t in trials if t.state in FINISHED]
    assert len(done) == 2
    mine = [r for r in runs if r.data.tags.get("study") == OT]
    assert len([r for r in mine if r.data.tags["stage"] == "study"]) == 1
    assert sorted(int(r.data.tags["trial"]) for r in mine if r.data.tags["stage"] == "trial") \
        == sorted(t.number for t in done)
    assert [int(r.data.tags["seed"]) for r in mine if r.data.tags["stage"] == "final"] == [0]
    teachers = [r for r in runs if r.data.tags["stage"] == "teacher"]
    assert len(teachers) == 2  # one per machine: each has its own results folder and cache


def test_tracking_uri_takes_the_installed_driver(postgres_url) -> None:
    """``postgresql://`` as the README writes it works with psycopg2 alone."""
    uri = tracking_uri_for(empty_database(postgres_url, "mlflow_driver"), "unused")
    MlflowClient(uri).search_experiments(max_results=1)


def test_unreachable_tracking_uri_is_a_clear_error(tmp_path, capsys) -> None:
    closed = f"postgresql://otbench:secret@127.0.0.1:{free_port()}/mlflow"
    code = cli.main(["run", "--results-dir", str(tmp_path), "--tracking-uri", closed,
                     "--set", "train.epochs=1", "--set", "teacher.train.epochs=1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--tracking-uri" in err and "***" in err and "secret" not in err
