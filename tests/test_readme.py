"""The README stays true: CI runs its commands, and its methods table lists every method."""

from __future__ import annotations

import re
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


def test_every_image_the_readme_shows_is_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", readme)
    assert images, "the README shows the quick suite's figures (issues #5 and #9)"
    for image in images:
        path = ROOT / image
        assert path.is_file() and path.stat().st_size > 1000, image
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
