"""The README stays true: CI runs its commands, and its methods table lists every method."""

from __future__ import annotations

import re
import shlex
from itertools import pairwise
from pathlib import Path

import pytest

from otbench.benchmark.cli import build_parser
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


def test_every_image_the_readme_shows_is_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", readme)
    assert images, "the README shows the quick suite's figures (issues #5 and #9)"
    for image in images:
        path = ROOT / image
        assert path.is_file() and path.stat().st_size > 1000, image
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image


def readme_commands() -> list[str]:
    """Every ``otbench`` command the README shows, in code blocks or inline code, without
    comments."""
    readme = (ROOT / "README.md").read_text()
    shown = re.findall(r"^(\.venv/bin/otbench .*)$", readme, flags=re.MULTILINE)
    shown += re.findall(r"`(\.venv/bin/otbench [^`]*)`", readme)
    return sorted({line.split("  #")[0].strip() for line in shown})


def test_the_readme_shows_commands() -> None:
    commands = readme_commands()
    assert len(commands) >= 10
    assert any(" methods --check " in c for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses_and_names_existing_files(command: str) -> None:
    """Each command's arguments parse as the CLI parses them; each file it names (a config,
    a suite, a plugin) exists in the repository."""
    argv = shlex.split(command)[1:]
    args = build_parser().parse_args(argv)
    assert args.handler is not None
    for arg in argv:
        if arg.endswith((".yaml", ".py")) and "/" in arg:
            assert (ROOT / arg).is_file(), arg
