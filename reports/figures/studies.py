"""Sweep figures per study: optimization history and hyper-parameter importances.

Drawn here from the frames of :mod:`otbench.reports.studies` rather than with
``optuna.visualization.matplotlib``, which switches the global style to ggplot and draws
through pyplot: these keep the report's paper style and method colors and leak no state.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .style import legend_above, method_color, new_figure, styled


@styled
def history_figure(trials: pd.DataFrame, title: str, method: str) -> Figure:
    """Objective per trial (pruned ones at their last reported value, as crosses) and the
    best value so far (``trials``: :func:`~otbench.reports.studies.trial_values`)."""
    fig, ax = new_figure()
    color = method_color(method)
    complete, pruned = trials[~trials.pruned], trials[trials.pruned]
    ax.scatter(complete.number, complete.value, s=10, color=color, alpha=0.6, label="trial")
    if not pruned.empty:
        ax.scatter(pruned.number, pruned.value, s=12, color=color, alpha=0.6, marker="x",
                   label="pruned (last reported)")
    ax.step(trials.number, trials.best, where="post", color=color, label="best so far")
    ax.set_xlabel("Trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("Objective (val. accuracy)")
    ax.set_title(title, fontsize=6)
    legend_above(fig, ax)
    return fig


@styled
def importance_figure(importances: pd.Series, title: str, method: str) -> Figure:
    """Horizontal bars of importances by parameter, the most important on top."""
    names = list(importances.index)[::-1]
    fig, ax = new_figure(height=0.9 + 0.25 * len(names))
    ax.barh(names, [importances[n] for n in names], color=method_color(method))
    ax.set_xlabel("Importance (normalized)")
    ax.set_title(title, fontsize=6)
    ax.grid(axis="y", visible=False)
    return fig
