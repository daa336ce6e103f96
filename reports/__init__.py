"""Reports: MLflow runs → tidy DataFrame → tables (md, LaTeX, HTML, CSV), figures (PNG, PDF)
and one self-contained ``report.html``. Entry point: :func:`write_report`.

``write_report`` is imported on first use, so registering the ``otbench report`` command
does not load pandas, matplotlib and MLflow for every other command.
"""

from typing import Any

from .errors import NoFinalRunsError, ReportError, UnknownExperimentError
from .options import FORMATS, ReportOptions, report_dir

__all__ = ["FORMATS", "NoFinalRunsError", "ReportError", "ReportOptions",
           "UnknownExperimentError", "report_dir", "write_report"]


def __getattr__(name: str) -> Any:
    if name == "write_report":
        from .report import write_report

        return write_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
