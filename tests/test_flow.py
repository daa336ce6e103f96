"""The flow is one way: suite → studies → runs → MLflow/Optuna → report. Nothing under
``sweeps/`` reaches into ``reports/``: a suite may validate its ``report:`` options with the
public :class:`ReportOptions`, and the sweep command may only call the report's public entry
point once the sweep is over."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, absolute, relative imports resolved in ``otbench``."""
    package = "otbench." + ".".join(path.relative_to(ROOT).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_imported_modules_resolves_relative_and_absolute_imports() -> None:
    folder = ROOT / "sweeps"
    found = imported_modules(folder / "worker.py")
    assert "otbench.sweeps.suite" in found and "otbench.benchmark.tracking" in found


def test_nothing_under_sweeps_imports_the_reports_internals() -> None:
    offenders = {}
    for path in sorted((ROOT / "sweeps").rglob("*.py")):
        reports = {m for m in imported_modules(path) if m.startswith("otbench.reports")}
        allowed = {"otbench.reports", "otbench.reports.ReportOptions"}
        if path.name == "cli.py":
            allowed |= {"otbench.reports.write_report", "otbench.reports.report_dir"}
        if reports - allowed:
            offenders[path.name] = sorted(reports - allowed)
    assert offenders == {}
