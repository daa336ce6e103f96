"""The critical-difference diagram of Demšar (2006): methods on an axis of average ranks, a bar
as long as the Nemenyi critical difference, and thick lines joining the groups of methods whose
ranks are closer than it (not significantly different).

Drawn with matplotlib: scikit-posthocs' diagram joins methods by a matrix of pairwise p-values
rather than by the critical difference, and brings statsmodels and seaborn along.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure


def cliques(ranks: pd.Series, critical_difference: float) -> list[tuple[str, str]]:
    """The maximal runs of methods (sorted by rank) spanning less than the critical
    difference, as (first, last) method; single methods are not listed."""
    ordered = ranks.sort_values()
    values, names = ordered.to_numpy(), list(ordered.index)
    groups: list[tuple[str, str]] = []
    last = -1
    for i in range(len(values)):
        j = i
        while j + 1 < len(values) and values[j + 1] - values[i] < critical_difference:
            j += 1
        if j > i and j > last:
            groups.append((names[i], names[j]))
            last = j
    return groups


def critical_difference_diagram(ranks: pd.Series, critical_difference: float,
                                labels: dict[str, str] | None = None) -> Figure:
    """``ranks``: average rank per method (1 = best, drawn on the left)."""
    labels = labels or {}
    ordered = ranks.sort_values()
    k = len(ordered)
    half = (k + 1) // 2
    rows = max(half, k - half)
    fig = Figure(figsize=(6.4, 1.3 + 0.28 * rows), layout="constrained")
    ax = fig.add_subplot()
    low, high = 1, max(k, 2)
    axis_y, step = 0.0, 1.0
    ax.plot([low, high], [axis_y, axis_y], color="black", lw=1)
    for tick in range(low, high + 1):
        ax.plot([tick, tick], [axis_y, axis_y + 0.15], color="black", lw=1)
        ax.text(tick, axis_y + 0.25, str(tick), ha="center", va="bottom", fontsize=9)
    cd_y = axis_y + 1.0
    ax.plot([low, low + critical_difference], [cd_y, cd_y], color="black", lw=1.5)
    for end in (low, low + critical_difference):
        ax.plot([end, end], [cd_y - 0.1, cd_y + 0.1], color="black", lw=1)
    ax.text(low + critical_difference / 2, cd_y + 0.15, f"CD = {critical_difference:.2f}",
            ha="center", va="bottom", fontsize=9)
    for i, (method, rank) in enumerate(ordered.items()):
        left = i < half
        row = i if left else k - 1 - i
        y = axis_y - step * (row + 1) - 0.4
        x_text = low - 0.2 if left else high + 0.2
        ax.plot([rank, rank, x_text], [axis_y, y, y], color="0.3", lw=0.9)
        ax.text(x_text - 0.05 if left else x_text + 0.05, y,
                f"{labels.get(str(method), method)} ({rank:.2f})",
                ha="right" if left else "left", va="center", fontsize=9)
    for n, (first, last) in enumerate(cliques(ranks, critical_difference)):
        y = axis_y - 0.25 - 0.18 * n
        ax.plot([ordered[first] - 0.03, ordered[last] + 0.03], [y, y], color="black", lw=3,
                solid_capstyle="round")
    ax.set_xlim(low - 1.6, high + 1.6)
    ax.set_ylim(axis_y - step * rows - 0.9, cd_y + 0.6)
    ax.axis("off")
    return fig
