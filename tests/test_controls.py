"""A smaller controls suite end to end: the report marks the known effect (starting from the
teacher beats training from scratch on three images per class) and not the method's copy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from otbench.benchmark import cli
from otbench.reports import report_dir
from otbench.sweeps.suite import bundled_folder

SUITES = Path(str(bundled_folder()))


def small_controls(folder: Path) -> Path:
    """controls.yaml's transfer column alone, its plugin by absolute path."""
    suite = yaml.safe_load((SUITES / "controls.yaml").read_text())
    assert suite["report"] == {"reference": "finetune"}
    transfer = next(e for e in suite["scenarios"] if e["id"] == "transfer")
    suite.update(name="controls-small", scenarios=[transfer],
                 plugins=[str(SUITES / p) for p in suite["plugins"]])
    path = folder / "controls-small.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_small_controls_mark_the_known_effect_only(tmp_path, isolated_plugins) -> None:
    results = tmp_path / "results"
    assert cli.main(["sweep", str(small_controls(tmp_path)), "--results-dir", str(results),
                     "--quiet"]) == 0
    report = report_dir(results, "controls-small")
    summary = pd.read_csv(report / "summary.csv").set_index("method")
    assert summary.loc["scratch", "significant"]  # the teacher start helps ...
    assert summary.loc["scratch", "diff_high"] < 0  # ... and scratch is the worse one
    assert not summary.loc["finetune-copy", "significant"]
    assert summary.loc["finetune-copy", "diff"] == 0  # same seeds, same draws: same runs
    table = (report / "table.md").read_text()
    assert "†: differs from Fine-tune at level 0.05 after Holm's correction" in table
    assert "| scratch − Fine-tune |" in table
