"""The README stays true: CI runs its commands, and its methods table lists every method."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from otbench.methods import method_names

ROOT = Path(__file__).resolve().parents[1]


def ci_commands() -> list[str]:
    """The lines .ci/run marks as the README's (each follows a '# README:' comment)."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [after for before, after in pairwise(lines)
            if before.startswith("# README:")]


def test_ci_runs_exactly_the_readme_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = ci_commands()
    assert len(commands) == 2
    for command in commands:
        assert f"\n{command}\n" in readme, command


def test_every_registered_method_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in method_names():
        assert f"| `{name}` |" in readme, name
