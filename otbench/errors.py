"""Errors shared by every subpackage, so the CLI can map them to one exit code."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class OtbenchError(Exception):
    """Base of every error otbench raises on purpose (bad input, inapplicable method...)."""


class ConfigError(OtbenchError, ValueError):
    """A configuration value is wrong; the message names the field and the fix."""


class UnknownNameError(ConfigError, KeyError):
    """A name (dataset, model, method, layer) is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The registered name a typo most likely meant, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """Build the error for an unregistered name, suggesting the closest valid one."""
    choices = sorted(choices)
    guess = closest(name, choices)
    hint = f" Did you mean {guess!r}?" if guess else ""
    return UnknownNameError(
        f"unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(choices)}."
    )
