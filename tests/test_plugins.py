"""A user's method registered from outside the project, and the errors a bad plugin gets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from otbench.benchmark.plugins import ENV_VAR, load_plugins
from otbench.errors import ConfigError
from otbench.methods import method_names

ROOT = Path(__file__).resolve().parents[1]


def otbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop(ENV_VAR, None)
    return subprocess.run([sys.executable, "-m", "otbench.benchmark.cli", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_example_plugin_lists_and_trains(tmp_path: Path) -> None:
    plugin = str(ROOT / "examples" / "my_method.py")
    listed = otbench("methods", "--plugin", plugin, cwd=tmp_path)
    assert listed.returncode == 0 and "\ncosine " in listed.stdout
    run = otbench("run", str(ROOT / "configs" / "cross.yaml"), "--plugin", plugin, "--quiet",
                  "--set", "method=cosine", "--set", "train.epochs=2", "--set",
                  "teacher.train.epochs=2", "--results-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "cross cosine on digits:5-9@10" in run.stdout
    assert "cosine" not in method_names()  # the plugin ran in its own process


def write(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text("from otbench.methods import HyperParam, TransferMethod, register_method\n"
                    + body)
    return str(path)


@pytest.fixture(autouse=True)
def _no_inherited_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_a_plugin_that_fails_to_import_names_itself_and_the_error(tmp_path: Path) -> None:
    path = write(tmp_path, "broken", "import not_a_real_module\n")
    with pytest.raises(ConfigError, match=r"broken\.py.*failed to import.*not_a_real_module"):
        load_plugins([path])
    with pytest.raises(ConfigError, match="no such file"):
        load_plugins([str(tmp_path / "missing.py")])


def test_a_plugin_registering_a_taken_name_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "taken", "@register_method('ot')\nclass Mine(TransferMethod):\n"
                 "    def forward(self, step):\n        return {}\n")
    with pytest.raises(ConfigError, match=r"taken\.py.*'ot' is already registered"):
        load_plugins([path])


def test_a_plugin_declaring_a_bad_space_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "badspace", "@register_method('badspace')\n"
                 "class Mine(TransferMethod):\n"
                 "    hyperparams = (HyperParam('w', 'float', 1.0, 0.0, 1.0, log=True),)\n"
                 "    def forward(self, step):\n        return {}\n")
    with pytest.raises(ConfigError, match=r"badspace\.py.*'w': a log range needs low > 0"):
        load_plugins([path])
    assert "badspace" not in method_names()


def test_a_plugin_method_sweeps_beside_ot_and_shows_in_the_report(tmp_path: Path) -> None:
    import yaml

    plugin = tmp_path / "shared_plugin.py"
    plugin.write_text((ROOT / "examples" / "my_method.py").read_text()
                      .replace('"cosine"', '"mycos"').replace("cosine/", "mycos/"))
    suite = {"name": "plug",
             "defaults": {"teacher": {"model": "cnn-s", "train": {"epochs": 2}},
                          "train": {"epochs": 2, "batch_size": 32}},
             "scenarios": [{"id": "cross", "scenario": "cross", "task": "digits:5-9@10",
                            "student": "cnn-s", "teacher": {"task": "digits:0-4"},
                            "methods": ["ot", "mycos"]}],
             "budget": {"trials": 2}, "pruner": {"kind": "none"}, "final": {"seeds": 2}}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    results = tmp_path / "results"
    done = otbench("sweep", str(tmp_path / "suite.yaml"), "--plugin", str(plugin), "--quiet",
                   "--results-dir", str(results), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (results / "report" / "plug" / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert any("mycos" in row for row in rows) and any(" ot" in row.lower() for row in rows)


def test_the_example_comparison_suite_is_valid_with_the_plugin(tmp_path: Path) -> None:
    plugin = str(ROOT / "examples" / "my_method.py")
    done = otbench("sweep", str(ROOT / "examples" / "compare.yaml"), "--plugin", plugin,
                   "--dry-run", "--results-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "compare-cosine/cross/digits:5-9@10/cosine" in done.stdout
