"""Errors a report raises on purpose; all are :class:`OtbenchError`, so the CLI exits 2."""

from __future__ import annotations

from otbench.errors import OtbenchError


class ReportError(OtbenchError):
    """The report cannot be built from what the tracking store holds."""


class UnknownExperimentError(ReportError, KeyError):
    """No experiment of that name; the message lists the existing ones."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class NoFinalRunsError(ReportError):
    """The experiment has no finished final-stage run: nothing to put in a table yet."""
