"""``otbench methods --check``: the interface, gradient and determinism checks pass on every
built-in method and on the example plugin, and fail with a clear message on broken ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from otbench.benchmark.method_check import check_method, format_report
from otbench.benchmark.plugins import ENV_VAR
from otbench.methods import get_method, method_names

ROOT = Path(__file__).resolve().parents[1]

HEAD = """
import random

import torch
from otbench.methods import StepOutputs, TransferMethod, register_method


@register_method("{name}")
class Broken(TransferMethod):
    summary = "a deliberately broken plugin"
    reads = frozenset({{"student_features", "teacher_features"}})
    needs_layer_pairs = True

    def forward(self, step: StepOutputs) -> dict[str, torch.Tensor]:
        pair = self.pairs[-1]
        student = step.student_features[pair.student].mean()
        teacher = step.teacher_features[pair.teacher].mean()
"""
#: Each broken plugin's last line of ``forward``, and what its check must say.
BROKEN = {
    "teacher-grad": ("return {'teacher-grad/x': (student - teacher) ** 2}",
                     "gradient reaches the teacher's features: detach them"),
    "noisy": ("return {'noisy/x': (student - teacher.detach()) ** 2 * random.random()}",
              "not deterministic: term 'noisy/x'"),
    "unnamed": ("return {'x': (student - teacher.detach()) ** 2}",
                "term 'x': name each term 'unnamed/<part>'"),
}


def otbench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop(ENV_VAR, None)
    return subprocess.run([sys.executable, "-m", "otbench.benchmark.cli", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", method_names())
def test_every_built_in_method_passes(name: str) -> None:
    report = check_method(get_method(name))
    assert report.passed, format_report(report)
    assert report.scenarios


def test_the_example_plugin_passes_on_the_command_line() -> None:
    done = otbench("methods", "--check", "--plugin", "examples/my_method.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "cosine: passed (transfer, distill, cross)"


def test_broken_plugins_fail_with_a_clear_message(tmp_path: Path) -> None:
    plugins = []
    for name, (line, _) in BROKEN.items():
        path = tmp_path / f"{name.replace('-', '_')}.py"
        path.write_text(HEAD.format(name=name) + f"        {line}\n")
        plugins += ["--plugin", str(path)]
    done = otbench("methods", "--check", *plugins)
    assert done.returncode == 1, done.stderr
    for name, (_, message) in BROKEN.items():
        assert f"{name}: FAILED" in done.stdout
        assert message in done.stdout, name
    assert "teacher-grad: FAILED" in done.stdout
    lines = done.stdout.splitlines()
    noisy = lines.index("noisy: FAILED (transfer, distill, cross)")
    assert "gradient" not in lines[noisy + 1]  # its only problem is the noise


def test_check_names_a_method_and_refuses_an_unknown_one() -> None:
    done = otbench("methods", "--check", "kd")
    assert (done.returncode, done.stdout.strip()) == (0, "kd: passed (distill)")
    wrong = otbench("methods", "--check", "kdd")
    assert wrong.returncode == 2 and "Did you mean 'kd'" in wrong.stderr
