"""A result column's diagnostics figures drawn ahead of the sweep's report, on a spare core.

The report at a sweep's end draws each result column's diagnostics figures: in the quick
suite a grid of nine panels per column and a heat map, a second and more of its time on two
cores. A column's final runs are done while the next column's train, and a CPU sweep that
records diagnostics in a background process has a core for it, mostly idle. There a process
draws the finished column's figures into the report's figure cache
(:func:`otbench.reports.report.prepare_diagnostics`), and the report copies them when their
data is still the same; if not, or if drawing ahead failed or had not finished when the
final runs did, the report draws them itself.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from multiprocessing.pool import Pool
from pathlib import Path

from .suite import StudySpec, Suite

ColumnKey = tuple[str, str, str]  # scenario, entry, task: a report's result column


class FiguresAhead:
    """Submits each column of final runs, once the worker has moved on to another column's,
    to a process of its own that runs only on otherwise idle CPU time."""

    def __init__(self, suite: Suite, tracking_uri: str) -> None:
        self.suite, self.tracking_uri = suite, tracking_uri
        self.column: ColumnKey | None = None
        self.pool: Pool | None = None

    def final_started(self, spec: StudySpec) -> None:
        """A final run of ``spec`` starts here: the column of the previous one is done."""
        column = (spec.plan.config.scenario, spec.entry, spec.plan.config.task)
        if self.column is not None and column != self.column:
            self._submit(self.column)
        self.column = column

    def _submit(self, column: ColumnKey) -> None:
        if self.pool is None:
            self.pool = multiprocessing.get_context("spawn").Pool(1, _spare_time_only)
        self.pool.apply_async(_draw, (self.tracking_uri, self.suite.experiment,
                                      self.suite.report_dir, column),
                              error_callback=_warn)

    def close(self) -> None:
        """Stop, without waiting: the report draws what is not drawn by now (a kept figure is
        written whole or not at all), and the process's teardown would take seconds."""
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def __enter__(self) -> FiguresAhead:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _spare_time_only() -> None:
    """Run only when a core would otherwise idle (Linux), else at the lowest priority: the
    runs and their diagnostics come first."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def _warn(err: BaseException) -> None:
    warnings.warn(f"drawing diagnostics figures ahead failed ({type(err).__name__}: {err}); "
                  "the report draws them", RuntimeWarning, stacklevel=1)


def _draw(tracking_uri: str, experiment: str, report_dir: Path, column: ColumnKey) -> None:
    """The process's job; the reports package is imported there, not in the worker."""
    from otbench.reports.report import prepare_diagnostics

    prepare_diagnostics(tracking_uri, experiment, report_dir, [column])
