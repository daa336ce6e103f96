"""Representation-diagnostics figures: per-epoch curves of a result column, accuracy vs. the
final OT distance, and the transport plans of one run as heat maps."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..representation import DIAG_PREFIX, QUANTITIES, CurveData
from ..tables import ResultTable
from .style import COLUMN_WIDTH, HEIGHT, TEXT_WIDTH, band, method_color, panels, styled

LEGEND_COLUMNS = 4


def _method_curves(ax: Any, data: CurveData, key: str) -> None:
    """Each method's mean ± std over runs per epoch of one metric."""
    if key not in data.per_step.index.get_level_values("key"):
        return
    rows = data.per_step.xs(key, level="key")
    present = set(rows.index.get_level_values("method"))
    for method, label in data.methods:
        if method in present:
            curve = rows.xs(method, level="method")
            epochs = curve.index.to_numpy()
            band(ax, epochs, curve["mean"].to_numpy(), curve["std"].to_numpy(),
                 method_color(method), label, marker=recorded_marker(epochs))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4))


def recorded_marker(epochs: np.ndarray) -> str | None:
    """A marker on each recorded epoch when epochs were skipped (``diagnostics_every`` > 1)
    or only one was recorded: the lines between records are interpolation, and a lone point
    has no line to show it."""
    return "o" if len(epochs) < 2 or (np.diff(epochs) > 1).any() else None


@styled
def diagnostic_curves(data: CurveData) -> Figure:
    """One row of panels per quantity, one panel per layer: each method's mean over seeds per
    recorded epoch (epoch 0: before training) with a ±std band; one legend below."""
    fig, axes = panels(len(data.quantities), len(data.layers), sharex="col")
    for row, quantity in enumerate(data.quantities):
        for col, layer in enumerate(data.layers):
            ax = axes[row, col]
            _method_curves(ax, data, f"{DIAG_PREFIX}{quantity}/{layer}")
            if row == 0:
                ax.set_title(layer)
            if row == len(data.quantities) - 1:
                ax.set_xlabel("Epoch")
            if col == 0:
                ax.set_ylabel(QUANTITIES[quantity])
    seen: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center",
                   ncols=min(len(seen), LEGEND_COLUMNS))
    fig.suptitle(data.heading, fontsize=8)
    return fig


@styled
def accuracy_vs_distance(points: pd.DataFrame, table: ResultTable) -> Figure:
    """Test accuracy against final OT distance at each run's deepest layer: one point per
    final run, one color per method."""
    opts = table.options
    metric = opts.metric
    fig = Figure(figsize=(COLUMN_WIDTH, HEIGHT + 0.3), layout="constrained")
    ax = fig.add_subplot()
    for method in opts.order_methods(points.method.unique()):
        rows = points[points.method == method]
        ax.scatter(rows.distance, rows[metric] * opts.scale, s=14, alpha=0.8,
                   color=method_color(method), label=opts.method_label(method))
    layers = sorted(set(points.layer))
    ax.set_xlabel(f"Final OT distance to teacher ({', '.join(layers)})")
    ax.set_ylabel(f"{'Test' if metric == 'test/acc' else 'Validation'} accuracy (%)")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4))
    return fig


def plan_order(plan_last: np.ndarray) -> np.ndarray:
    """Student columns ordered by their matched teacher neuron (the row holding most of
    their mass in the last plan), ties kept in index order."""
    return np.argsort(plan_last.argmax(axis=0), kind="stable")


def mass_shares(plan: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The plan's columns in ``order``, each as shares of its student neuron's mass."""
    return plan[:, order] / np.maximum(plan.sum(axis=0)[order], 1e-30)


@styled
def plan_heatmaps(plans: dict[str, tuple[np.ndarray, np.ndarray]], epochs: tuple[int, int],
                  heading: str) -> Figure:
    """Per layer (rows), the transport plan at the first and last recorded epoch (columns):
    teacher neurons by index down, student neurons across, ordered by the final matching, so
    a settled matching shows as a staircase. Each column shows the shares of that student
    neuron's mass, so that every panel reads on the one color scale."""
    shares = {}
    for layer, (first, last) in plans.items():
        order = plan_order(last)
        shares[layer] = (mass_shares(first, order), mass_shares(last, order))
    top = max((float(s.max()) for pair in shares.values() for s in pair), default=1.0)
    fig, axes = panels(len(plans), 2, height=HEIGHT * 0.8, width=TEXT_WIDTH)
    image = None
    for row, (layer, pair) in enumerate(shares.items()):
        for col, (share, epoch) in enumerate(zip(pair, epochs, strict=True)):
            ax = axes[row, col]
            image = ax.imshow(share, aspect="auto", interpolation="nearest", cmap="viridis",
                              vmin=0.0, vmax=top)
            ax.grid(False)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
            ax.set_title(f"{layer}, epoch {epoch}")
    for ax in axes[:, 0]:
        ax.set_ylabel("Teacher neuron")
    for ax in axes[-1, :]:
        ax.set_xlabel("Student neuron (sorted by final match)")
    if image is not None:
        fig.colorbar(image, ax=axes, label="Share of the student\nneuron's mass",
                     shrink=0.6)
    fig.suptitle(heading, fontsize=8)
    return fig
