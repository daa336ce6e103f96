"""Ranks across tasks: each method's average rank over the result columns, the Friedman test
that all rank alike, and the Nemenyi critical difference (Demšar 2006), for reports with at
least three columns. Only methods with a result in every column take part: the Friedman test
needs complete blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import statistics
from .figures.ranks import critical_difference_diagram
from .figures.style import save_figure
from .html import FigureEntry
from .tables import Column, ResultTable

#: Fewer columns than this give no ranks across tasks (and a note says so).
MIN_COLUMNS = 3
SECTION = "Ranks across tasks"
CSV = "ranks.csv"


@dataclass(frozen=True)
class RankSummary:
    """``scores``: column × method means; ``ranks``: average rank per method (1 = best)."""

    scores: pd.DataFrame
    ranks: pd.Series
    friedman: statistics.Friedman
    critical_difference: float
    left_out: list[str]
    alpha: float

    def frame(self) -> pd.DataFrame:
        """Average ranks as a small table (best first), for the page and ``ranks.csv``."""
        return (self.ranks.sort_values().rename_axis("method").reset_index()
                .rename(columns={"rank": "average rank"}))


def rank_summary(table: ResultTable) -> RankSummary | str:
    """The ranks of the methods present in every column, or why there are none."""
    if len(table.columns) < MIN_COLUMNS:
        return (f"No ranks across tasks: the report has {len(table.columns)} result "
                f"column(s); the Friedman test needs at least {MIN_COLUMNS}.")
    scores = table.cells.pivot_table(index=list(Column._fields), columns="method",
                                     values="mean")
    complete = [m for m in table.methods if m in scores and scores[m].notna().all()]
    left_out = [m for m in table.methods if m not in complete]
    if len(complete) < 3:
        return ("No ranks across tasks: fewer than three methods have a result in every "
                "column.")
    scores = scores[complete]
    alpha = table.options.alpha
    return RankSummary(scores, statistics.average_ranks(scores), statistics.friedman(scores),
                       statistics.nemenyi_critical_difference(len(complete), len(scores),
                                                              alpha),
                       left_out, alpha)


def summary_text(summary: RankSummary, table: ResultTable) -> str:
    """One paragraph: what was ranked, the Friedman result, the critical difference."""
    opts = table.options
    ranked = ", ".join(f"{opts.method_label(m)} {r:.2f}"
                       for m, r in summary.ranks.sort_values().items())
    text = (f"Average rank over the {len(summary.scores)} result columns (1 = best, ties "
            f"share ranks): {ranked}. Friedman test that all methods rank alike: chi2 = "
            f"{summary.friedman.statistic:.2f}, p = {summary.friedman.p_value:.3g}. Nemenyi "
            f"critical difference at level {summary.alpha:g}: {summary.critical_difference:.2f} "
            "(methods whose average ranks differ by less are joined in the diagram).")
    if summary.left_out:
        text += (" Left out, as they lack a result in some column: "
                 + ", ".join(opts.method_label(m) for m in summary.left_out) + ".")
    return text


def rank_section(table: ResultTable, out: Path, csv: bool = True
                 ) -> tuple[list[FigureEntry], list[str], dict[str, list[str]]]:
    """The critical-difference diagram, its paragraph and ``ranks.csv``; or a note why
    there are no ranks."""
    summary = rank_summary(table)
    if isinstance(summary, str):
        return [], [summary], {}
    labels = {m: table.options.method_label(m) for m in summary.ranks.index}
    png, pdf = save_figure(critical_difference_diagram(summary.ranks,
                                                       summary.critical_difference, labels),
                           out / "figures", "ranks_cd")
    if csv:
        summary.frame().to_csv(out / CSV, index=False)
    caption = (f"Average ranks over {len(summary.scores)} result columns with the Nemenyi "
               f"critical difference (level {summary.alpha:g}); bars join methods not "
               "significantly different")
    return [FigureEntry(SECTION, caption, png, pdf)], [], {SECTION: [summary_text(summary,
                                                                                  table)]}
