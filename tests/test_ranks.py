"""Ranks across tasks in a report: the methods with a result everywhere, the Friedman test, the
critical-difference diagram and its groups; and the table's marks under the null."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from otbench.reports import ranks, statistics
from otbench.reports.figures.ranks import cliques, critical_difference_diagram
from otbench.reports.options import ReportOptions
from otbench.reports.tables import final_results, summarize

#: Mean test accuracy per (column task, method); each method's seeds are mean - 1, mean, +1.
MEANS = {"digits@5": {"finetune": 60, "kd": 70, "at": 65, "ot": 72, "rkd": 50},
         "digits@10": {"finetune": 70, "kd": 80, "at": 75, "ot": 79},
         "digits@20": {"finetune": 80, "kd": 84, "at": 86, "ot": 85},
         "digits@40": {"finetune": 85, "kd": 90, "at": 88, "ot": 91}}


def final_frame(means: dict[str, dict[str, float]]) -> pd.DataFrame:
    rows = [{"stage": "final", "status": "FINISHED", "scenario": "cross", "entry": "cross",
             "task": task, "method": method, "seed": seed, "test/acc": (mean + step) / 100}
            for task, methods in means.items() for method, mean in methods.items()
            for seed, step in enumerate((-1, 0, 1))]
    return pd.DataFrame(rows)


def table_of(means: dict[str, dict[str, float]]):
    options = ReportOptions()
    return summarize(final_results(final_frame(means), options), options)


def test_rank_summary_uses_complete_methods_only() -> None:
    summary = ranks.rank_summary(table_of(MEANS))
    assert isinstance(summary, ranks.RankSummary)
    assert summary.left_out == ["rkd"]
    scores = pd.DataFrame(MEANS).T[["finetune", "kd", "at", "ot"]].dropna()
    expected = statistics.average_ranks(scores)
    assert summary.ranks.to_dict() == pytest.approx(expected.to_dict())
    # finetune last everywhere (4); ot 1, 2, 2, 1; kd 2, 1, 3, 2; at 3, 3, 1, 3
    assert summary.ranks.to_dict() == pytest.approx({"finetune": 4.0, "kd": 2.0, "at": 2.5,
                                                     "ot": 1.5})
    assert summary.critical_difference == pytest.approx(
        statistics.nemenyi_critical_difference(4, 4))
    assert summary.friedman == statistics.friedman(scores)
    text = ranks.summary_text(summary, table_of(MEANS))
    assert "OT 1.50, KD 2.00, AT 2.50, Fine-tune 4.00" in text
    assert "Left out, as they lack a result in some column: RKD." in text


def test_too_few_columns_or_methods_give_a_reason() -> None:
    two = {task: MEANS[task] for task in list(MEANS)[:2]}
    assert "has 2 result column(s)" in ranks.rank_summary(table_of(two))
    sparse = {task: {"ot": 70, "kd": 60} for task in MEANS}
    assert "fewer than three methods" in ranks.rank_summary(table_of(sparse))


def test_cliques_join_runs_closer_than_the_critical_difference() -> None:
    ranks_ = pd.Series({"a": 1.0, "b": 1.5, "c": 2.4, "d": 3.9, "e": 4.0})
    assert cliques(ranks_, 1.0) == [("a", "b"), ("b", "c"), ("d", "e")]
    assert cliques(ranks_, 5.0) == [("a", "e")]
    assert cliques(ranks_, 0.05) == []


def test_diagram_names_every_method_and_the_critical_difference(tmp_path: Path) -> None:
    summary = ranks.rank_summary(table_of(MEANS))
    fig = critical_difference_diagram(summary.ranks, summary.critical_difference,
                                      {"ot": "OT"})
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"OT (1.50)", "kd (2.00)", "at (2.50)", "finetune (4.00)"} <= texts
    assert f"CD = {summary.critical_difference:.2f}" in texts
    entries, notes, texts_ = ranks.rank_section(table_of(MEANS), tmp_path)
    assert notes == [] and entries[0].png.is_file() and entries[0].pdf.is_file()
    assert "Friedman test" in texts_[ranks.SECTION][0]
    assert pd.read_csv(tmp_path / ranks.CSV)["method"].tolist() == ["ot", "kd", "at",
                                                                     "finetune"]


def test_false_marks_stay_near_alpha_under_the_null() -> None:
    """A method and its copy trained with independent noise but the same data draw per seed:
    over 200 columns the table marks about alpha = 5 % of them (binomial 99.9 % band)."""
    rng = np.random.default_rng(1)
    columns, seeds = 200, 10
    draw = rng.normal(80, 5, size=(columns, 1, seeds))  # the seed's data draw, shared
    values = draw + rng.normal(0, 1.5, size=(columns, 2, seeds))  # each method's own noise
    rows = [{"stage": "final", "status": "FINISHED", "scenario": "cross", "entry": "cross",
             "task": f"digits@{c + 1}", "method": method, "seed": s,
             "test/acc": values[c, m, s] / 100}
            for c in range(columns) for m, method in enumerate(("ot", "copy"))
            for s in range(seeds)]
    options = ReportOptions()
    table = summarize(final_results(pd.DataFrame(rows), options), options)
    marked = table.cells.loc[table.cells.method == "copy", "significant"]
    low, high = stats.binom.ppf([0.0005, 0.9995], columns, 0.05) / columns
    assert low <= marked.mean() <= high
