"""Representation diagnostics of the final runs (issue #9): how close each student ends to its
teacher, how its neuron matching settles, and whether that tracks test accuracy.

Every training run logs, per layer pair keyed by the student layer, ``diag/ot/<layer>`` and
``diag/cka/<layer>`` at steps 0..E, ``diag/stability/<layer>`` at steps 1..E, and a
``diagnostics.npz`` artifact with the matchings, entropies and identity distances of every
recorded epoch and the transport plans of the first and last
(:mod:`otbench.benchmark.diagnostics`). This module turns them into figures and a paragraph
whose every statement is computed from those numbers.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import MaxNLocator
from scipy import stats

from .collect import CONFIG_PREFIX
from .plots import (
    COLUMN_WIDTH,
    HEIGHT,
    TEXT_WIDTH,
    _band,
    content_key,
    in_column,
    method_color,
    styled,
    title,
)
from .tables import Column, ResultTable

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per report

DIAG_PREFIX = "diag/"
#: Per-epoch quantities plotted, with their axis labels.
QUANTITIES = {"ot": "OT distance to teacher", "cka": "Linear CKA with teacher",
              "stability": "Neurons re-matched (fraction)"}
ARTIFACT = "diagnostics.npz"
#: Below this many runs a rank correlation says nothing.
MIN_CORRELATION_RUNS = 3


def _natural_key(name: str) -> list[Any]:
    """``features.10`` after ``features.9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def logged_layers(runs: pd.DataFrame) -> list[str]:
    """Layers with a ``diag/ot/<layer>`` value in any of ``runs``, shallow to deep: in the
    order of the runs' ``layer_pairs`` param (teacher → student pairs as configured), else
    naturally sorted by name."""
    found = [c.removeprefix(f"{DIAG_PREFIX}ot/") for c in runs.columns
             if c.startswith(f"{DIAG_PREFIX}ot/") and runs[c].notna().any()]
    order: list[str] = []
    for text in runs.get(CONFIG_PREFIX + "layer_pairs", pd.Series(dtype=object)).dropna():
        order += [s for s in _pair_students(str(text)) if s not in order]
    ranked = {name: i for i, name in enumerate(order)}
    return sorted(found, key=lambda n: (ranked.get(n, len(ranked)), _natural_key(n)))


@functools.lru_cache(maxsize=1024)
def _pair_students(text: str) -> tuple[str, ...]:
    """Student layers of a logged ``layer_pairs`` param (``[[t, s], ...]``), parsed once per
    distinct text: every run of a column logs the same pairs."""
    try:
        return tuple(str(pair[1]) for pair in yaml.safe_load(text))
    except (yaml.YAMLError, TypeError, IndexError, KeyError):
        return ()


def has_diagnostics(runs: pd.DataFrame) -> bool:
    return bool(logged_layers(runs))


def history_keys(layers: Iterable[str]) -> list[str]:
    return [f"{DIAG_PREFIX}{q}/{layer}" for layer in layers for q in QUANTITIES]


def final_distances(final: pd.DataFrame, metric: str = "test/acc") -> pd.DataFrame:
    """One row per final run with diagnostics: its deepest logged layer, the last OT distance
    and CKA there, and its ``metric``. Runs are taken by their ``layer_pairs`` (few distinct
    values), which fix the order of their layers."""
    columns = ["run_id", "scenario", "entry", "task", "method", "seed", "layer", "distance",
               "cka", metric]
    pairs = CONFIG_PREFIX + "layer_pairs"
    groups = (final.groupby(pairs, dropna=False, sort=False) if pairs in final
              else [(None, final)])
    parts = [_deepest_values(runs, layers, metric) for _, runs in groups
             if (layers := logged_layers(runs))]
    return (pd.concat(parts, ignore_index=True)[columns] if parts
            else pd.DataFrame(columns=columns))


def _deepest_values(runs: pd.DataFrame, layers: list[str], metric: str) -> pd.DataFrame:
    """For each of ``runs`` with an OT distance at any of ``layers`` (shallow to deep), the
    last such layer and its values."""
    distances = runs[[f"{DIAG_PREFIX}ot/{layer}" for layer in layers]].to_numpy(float)
    logged = ~np.isnan(distances)
    deepest = len(layers) - 1 - np.argmax(logged[:, ::-1], axis=1)
    chosen = logged.any(axis=1)
    rows, index = np.flatnonzero(chosen), deepest[chosen]
    cka = runs.reindex(columns=[f"{DIAG_PREFIX}cka/{layer}" for layer in layers])
    out = runs.iloc[rows][["run_id", "scenario", "entry", "task", "method", "seed"]].copy()
    out["layer"] = np.asarray(layers, dtype=object)[index]
    out["distance"] = distances[rows, index]
    out["cka"] = cka.to_numpy(float)[rows, index]
    out[metric] = runs.iloc[rows][metric].astype(float) if metric in runs else np.nan
    return out


def distance_correlations(points: pd.DataFrame, table: ResultTable) -> pd.DataFrame:
    """Per result column: Spearman's ρ (and its p-value, n) between final distance and the
    table's metric over the column's runs (``points``: :func:`final_distances`), and the
    methods ending closest to and farthest from the teacher (lowest and highest mean final
    distance)."""
    metric = table.options.metric
    rows = []
    for column in table.columns:
        chosen = points[in_column(points, column)].dropna(subset=["distance", metric])
        if chosen.empty:
            continue
        rho = p = float("nan")
        if (len(chosen) >= MIN_CORRELATION_RUNS and chosen.distance.nunique() > 1
                and chosen[metric].nunique() > 1):
            result = stats.spearmanr(chosen.distance, chosen[metric])
            rho, p = float(result.statistic), float(result.pvalue)
        means = chosen.groupby("method").distance.mean().sort_values(kind="stable")
        rows.append({**column._asdict(), "layer": ", ".join(sorted(set(chosen.layer))),
                     "n": len(chosen), "rho": rho, "p_value": p,
                     "closest": means.index[0], "closest_distance": float(means.iloc[0]),
                     "farthest": means.index[-1], "farthest_distance": float(means.iloc[-1]),
                     "methods": len(means)})
    return pd.DataFrame(rows, columns=[*Column._fields, "layer", "n", "rho", "p_value",
                                       "closest", "closest_distance", "farthest",
                                       "farthest_distance", "methods"])


def summary_sentences(correlations: pd.DataFrame, table: ResultTable) -> list[str]:
    """One sentence per column, every number and name taken from ``correlations``."""
    opts = table.options
    metric = {"test/acc": "test accuracy", "val/acc_final": "validation accuracy"}.get(
        opts.metric, opts.metric)
    sentences = []
    for row in correlations.itertuples(index=False):
        head = title(table, Column(row.scenario, row.entry, row.task))
        if np.isnan(row.rho):
            corr = (f"no rank correlation between final OT distance ({row.layer}) and "
                    f"{metric} (n = {row.n} runs: fewer than {MIN_CORRELATION_RUNS} or "
                    "constant values)")
        else:
            corr = (f"Spearman ρ = {row.rho:.2f} between final OT distance ({row.layer}) and "
                    f"{metric} over n = {row.n} runs (p = {row.p_value:.3g})")
        ends = f"{opts.method_label(row.closest)} ends closest to the teacher " \
               f"(mean distance {row.closest_distance:.4g})"
        if row.methods > 1:
            ends += (f", {opts.method_label(row.farthest)} farthest "
                     f"({row.farthest_distance:.4g})")
        sentences.append(f"{head}: {corr}; {ends}.")
    return sentences


# ---------------------------------------------------------------------------- figures
#: A curve grid's margins in inches, and the space beside a tick label (tick and padding). A
#: fixed layout: a layout engine makes a whole extra pass over a grid's text, 40 % of drawing
#: a 3 × 3 grid's PNG (measured); only the tick labels' widths vary, estimated from them.
GRID_INCHES = {"right": 0.12, "top": 0.45, "bottom": 0.45, "hgap": 0.2, "beside_ticks": 0.2}
#: Room for a y-axis label (a line of 8 pt and its padding), in inches.
YLABEL_INCHES = 0.2
#: The height of one row of a legend below a grid, in inches.
LEGEND_ROW_INCHES = 0.17
LEGEND_COLUMNS = 4
#: A bound on a tick label character's width, in em: the digits of DejaVu Sans are 0.64 em
#: wide, a point narrower, a minus sign (one at most) wider.
TICK_CHAR_EM = 0.7


def _panels(rows: int, columns: int, height: float = HEIGHT, width: float | None = None,
            sharex: str | bool = False, layout: str | None = "constrained"
            ) -> tuple[Figure, np.ndarray]:
    width = width or min(TEXT_WIDTH, max(COLUMN_WIDTH, 2.2 * columns))
    fig = Figure(figsize=(width, height * rows), layout=layout)
    axes = fig.subplots(rows, columns, squeeze=False, sharex=sharex)
    return fig, axes


def _place_grid(fig: Figure, axes: np.ndarray, heading: str, legend_rows: int) -> None:
    """Lay the panels out by :data:`GRID_INCHES`, each column's left margin fitting its
    widest y tick label, the heading above the panels and room for the legend below."""
    width, height = fig.get_size_inches()
    fig.suptitle(heading, fontsize=8, y=1 - 0.05 / height, va="top")
    rows, columns = axes.shape
    beside = [max(_tick_label_inches(ax) for ax in column) + GRID_INCHES["beside_ticks"]
              for column in axes.T]
    left = YLABEL_INCHES + beside[0]
    wgap = max(beside[1:], default=0.0)
    bottom = GRID_INCHES["bottom"] + LEGEND_ROW_INCHES * legend_rows
    panel_width = (width - left - GRID_INCHES["right"] - wgap * (columns - 1)) / columns
    panel_height = (height - GRID_INCHES["top"] - bottom
                    - GRID_INCHES["hgap"] * (rows - 1)) / rows
    fig.subplots_adjust(left=left / width, right=1 - GRID_INCHES["right"] / width,
                        bottom=bottom / height, top=1 - GRID_INCHES["top"] / height,
                        wspace=wgap / panel_width, hspace=GRID_INCHES["hgap"] / panel_height)


def _tick_label_inches(ax: Any) -> float:
    """The widest y tick label of ``ax`` as its formatter writes it, estimated from its
    characters (no drawing); in the style the figure is built in (:func:`styled`)."""
    low, high = sorted(ax.get_ylim())
    ticks = [t for t in ax.yaxis.get_majorticklocs() if low <= t <= high]
    labels = ax.yaxis.get_major_formatter().format_ticks(ticks)
    points = FontProperties(size=mpl.rcParams["ytick.labelsize"]).get_size_in_points()
    return max((len(label) for label in labels), default=0) * TICK_CHAR_EM * points / 72


def _legend(fig: Figure, axes: np.ndarray) -> int:
    """One legend at the bottom of the figure, each method once; returns its rows."""
    seen: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if not seen:
        return 0
    fig.legend(list(seen.values()), list(seen), loc="lower center",
               bbox_to_anchor=(0.5, 0.0), ncols=min(len(seen), LEGEND_COLUMNS))
    return -(-len(seen) // LEGEND_COLUMNS)


@dataclass(frozen=True)
class CurveData:
    """Everything a column's curve grid is drawn from (:func:`curve_data`), so that its
    :meth:`key` names the figure (see :class:`~.plots.FigureWriter`)."""

    per_step: pd.DataFrame  # mean and std over the runs, by key, method and step
    methods: tuple[tuple[str, str, str], ...]  # (method, label, color), in table order
    quantities: tuple[str, ...]
    layers: tuple[str, ...]
    heading: str

    def key(self) -> str:
        return content_key(self.per_step, self.methods, self.quantities, self.layers,
                           self.heading)


def curve_data(final: pd.DataFrame, histories: pd.DataFrame, table: ResultTable,
               column: Column, quantities: Iterable[str], layers: list[str]) -> CurveData:
    """The per-epoch mean and std of each method's runs in ``column``, with their labels."""
    chosen = final[in_column(final, column)]
    curves = histories[histories.run_id.isin(chosen.run_id)].merge(
        chosen[["run_id", "method"]], on="run_id")
    # One value per run and step: mean and std over the runs (seeds) in one pass.
    per_step = curves.groupby(["key", "method", "step"])["value"].agg(["mean", "std"])
    opts = table.options
    methods = opts.order_methods(per_step.index.get_level_values("method").unique())
    return CurveData(per_step, tuple((m, opts.method_label(m), method_color(m)) for m in methods),
                     tuple(quantities), tuple(layers), title(table, column))


def _method_curves(ax: Any, data: CurveData, key: str) -> None:
    """Each method's mean ± std over runs per epoch of one metric."""
    if key not in data.per_step.index.get_level_values("key"):
        return
    rows = data.per_step.xs(key, level="key")
    present = set(rows.index.get_level_values("method"))
    for method, label, color in data.methods:
        if method in present:
            curve = rows.xs(method, level="method")
            _band(ax, curve.index.to_numpy(), curve["mean"].to_numpy(),
                  curve["std"].to_numpy(), color, label)
    # Few ticks: a grid of small panels reads better, and tick labels are most of its drawing.
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4))


@styled
def diagnostic_curves(data: CurveData) -> Figure:
    """One row of panels per quantity, one panel per layer: each method's mean over seeds per
    epoch (epoch 0: before training) with a ±std band."""
    fig, axes = _panels(len(data.quantities), len(data.layers), sharex="col", layout=None)
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
    _place_grid(fig, axes, data.heading, _legend(fig, axes))
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
    fig, axes = _panels(len(plans), 2, height=HEIGHT * 0.8, width=TEXT_WIDTH)
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


def load_plans(client: Any, run_id: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                                  tuple[int, int]]:
    """The first and last plans per layer of one run's ``diagnostics.npz``, in the file's
    (configured) layer order, and the epochs they were recorded at."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(client.download_artifacts(run_id, ARTIFACT, folder))
        with np.load(path) as data:
            epochs = data["epochs"]
            plans = {name.removeprefix("plan_first/"):
                     (data[name], data["plan_last/" + name.removeprefix("plan_first/")])
                     for name in data.files if name.startswith("plan_first/")}
    first, last = (int(epochs[0]), int(epochs[-1])) if len(epochs) else (0, 0)
    return plans, (first, last)
