"""Accuracy figures: bars per scenario, validation curves per result column, accuracy vs.
samples per class, and a method's sensitivity to its weight over the sweep's trials."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, StrMethodFormatter

from ..options import ReportOptions, split_task
from ..tables import METRIC_NAMES, Column, ResultTable, in_column
from .style import COLUMN_WIDTH, TEXT_WIDTH, band, legend_above, method_color, new_figure, styled


def _accuracy_axis(ax: Axes, lows: list[float]) -> None:
    """Start the accuracy axis a little under the lowest bar (not at 0, where differences of a
    point between methods would be invisible) and never above 100 %."""
    low = min(lows) if lows else 0.0
    ax.set_ylim(bottom=max(0.0, 5 * np.floor((low - 2) / 5)))


@styled
def accuracy_bars(table: ResultTable, scenario: str) -> Figure:
    """Grouped bars: one group per column of the scenario, one bar (± std) per method."""
    opts = table.options
    columns = table.in_scenario(scenario)
    cells = table.cells[table.cells.scenario == scenario]
    methods = [m for m in table.methods if (cells.method == m).any()]
    width = min(TEXT_WIDTH, max(COLUMN_WIDTH, 0.6 + 0.22 * len(columns) * len(methods)))
    fig, ax = new_figure(width)
    bar = min(0.8 / len(methods), 0.25)  # a lone column's bars stay bars, not slabs
    lows = []
    for i, method in enumerate(methods):
        stats = [table.cell(column, method) for column in columns]
        means = [np.nan if c is None else c["mean"] for c in stats]
        stds = [0.0 if c is None or pd.isna(c["std"]) else c["std"] for c in stats]
        x = np.arange(len(columns)) + bar * (i + 0.5 - len(methods) / 2)
        ax.bar(x, means, bar, yerr=stds, color=method_color(method),
               label=opts.method_label(method), error_kw={"elinewidth": 0.8, "capsize": 1.5})
        lows += [m - s for m, s in zip(means, stds, strict=True) if not np.isnan(m)]
    ax.set_xticks(np.arange(len(columns)), [table.label(c) for c in columns])
    ax.set_ylabel(f"{metric_label(opts)} (%)")
    ax.set_title(opts.scenario_label(scenario))
    ax.grid(axis="x", visible=False)
    _accuracy_axis(ax, lows)
    legend_above(fig, ax)
    return fig


@styled
def validation_curves(final: pd.DataFrame, histories: pd.DataFrame, table: ResultTable,
                      column: Column) -> Figure:
    """Validation accuracy per epoch of the final runs: mean over seeds with a ±std band."""
    opts = table.options
    chosen = final[in_column(final, column)]
    curves = histories[(histories.key == "val/acc") & histories.run_id.isin(chosen.run_id)]
    curves = curves.merge(chosen[["run_id", "method"]], on="run_id")
    fig, ax = new_figure()
    for method in opts.order_methods(curves.method.unique()):
        per_seed = curves[curves.method == method].pivot_table(index="step", columns="run_id",
                                                               values="value")
        band(ax, per_seed.index.to_numpy(), per_seed.mean(axis=1).to_numpy() * opts.scale,
              per_seed.std(axis=1).to_numpy() * opts.scale, method_color(method),
              opts.method_label(method))
    ax.set_xlabel("Epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("Validation accuracy (%)")
    ax.set_title(table.title(column))
    legend_above(fig, ax)
    return fig


def sample_size_families(table: ResultTable) -> list[tuple[str, str]]:
    """(scenario, task family) pairs whose columns have two or more samples-per-class
    values, each once: the ones where accuracy vs. samples per class is one curve per method
    (a size seen twice means two different setups, e.g. two students, and no single curve)."""
    found: dict[tuple[str, str], list[int]] = {}
    for column in table.columns:
        family, per_class = split_task(column.task)
        if per_class is not None:
            found.setdefault((column.scenario, family), []).append(per_class)
    return [key for key, sizes in found.items()
            if len(sizes) > 1 and len(set(sizes)) == len(sizes)]


@styled
def accuracy_vs_samples(table: ResultTable, scenario: str, family: str) -> Figure:
    """Final accuracy (mean ± std) against training samples per class, one line per method:
    where the paper claims OT helps most (scarce data)."""
    opts = table.options
    cells = table.cells[table.cells.scenario == scenario].copy()
    split = cells.task.map(split_task)
    cells["family"] = split.str[0]
    cells["per_class"] = split.str[1]
    cells = cells[(cells.family == family) & cells.per_class.notna()].sort_values("per_class")
    fig, ax = new_figure()
    for method in opts.order_methods(cells.method.unique()):
        rows = cells[cells.method == method]
        band(ax, rows.per_class.to_numpy(float), rows["mean"].to_numpy(),
              rows["std"].to_numpy(), method_color(method), opts.method_label(method),
              marker="o")
    sizes = sorted(cells.per_class.unique())
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(int(s)) for s in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("Training samples per class")
    ax.set_ylabel(f"{metric_label(opts)} (%)")
    ax.set_title(f"{opts.scenario_label(scenario)} · {opts.task_label(family)}")
    legend_above(fig, ax)
    return fig


def sensitivity_data(runs: pd.DataFrame, column: Column, method: str = "ot",
                     param: str = "params.weight") -> pd.DataFrame:
    """Finished sweep trials of one method in one column with the param set (a pruned trial
    has no final validation accuracy, so none is among them)."""
    if param not in runs or "val/acc_final" not in runs:
        return runs.iloc[0:0]
    keep = ((runs.stage == "trial") & (runs.status == "FINISHED") & (runs.method == method)
            & in_column(runs, column) & runs[param].notna() & runs["val/acc_final"].notna())
    return runs[keep]


def searched_params(runs: pd.DataFrame, column: Column, method: str) -> list[str]:
    """The numeric hyper-parameters (``params.*``) that took more than one value over the
    method's finished sweep trials in this column: what its sweep searched."""
    if "val/acc_final" not in runs:
        return []
    found = []
    for param in sorted(c for c in runs.columns if c.startswith("params.")):
        values = sensitivity_data(runs, column, method, param)[param]
        numeric = values.map(lambda v: isinstance(v, int | float) and not isinstance(v, bool))
        if len(values) and numeric.all() and values.nunique() > 1:
            found.append(param)
    return found


@styled
def sensitivity(runs: pd.DataFrame, table: ResultTable, column: Column, method: str = "ot",
                param: str = "params.weight") -> Figure:
    """A method's validation accuracy over its sweep trials against one hyper-parameter (log
    x), with the final runs' test accuracy at the chosen value and the no-regularizer
    baseline for scale."""
    opts = table.options
    trials = sensitivity_data(runs, column, method, param)
    x = trials[param].to_numpy(float)
    fig, ax = new_figure()
    color = method_color(method)
    label = opts.method_label(method)
    ax.scatter(x, trials["val/acc_final"].to_numpy(float) * opts.scale, s=12, color=color,
               alpha=0.7, label=f"{label}: trials (val.)")
    finals = runs[(runs.stage == "final") & (runs.status == "FINISHED") & (runs.method == method)
                  & in_column(runs, column)]
    cell = table.cell(column, method)
    if cell is not None and param in finals and finals[param].notna().any():
        std = 0.0 if pd.isna(cell["std"]) else cell["std"]
        ax.errorbar([finals[param].astype(float).median()], [cell["mean"]], yerr=[std],
                    fmt="D", color="black", capsize=2, label=f"{label}: final (test)")
    baseline = table.cell(column, "finetune")
    if baseline is not None and method != "finetune":
        ax.axhline(baseline["mean"], color=method_color("finetune"), linestyle="--",
                   linewidth=1, label=f"{opts.method_label('finetune')} (test)")
    _weight_axis(ax, x)
    ax.set_xlabel(f"{label} {param.removeprefix('params.')}")
    ax.set_ylabel("Accuracy (%)")
    ax.set_title(table.title(column))
    legend_above(fig, ax)
    return fig


#: Most decades a log axis labels at 1, 2 and 5 × 10^k; wider ones are labelled at powers of
#: ten only, every other one past :data:`MAX_LABELLED_DECADES` (the labels would collide).
DENSE_DECADES = 2
MAX_LABELLED_DECADES = 5


def _weight_axis(ax: Axes, x: np.ndarray) -> None:
    """Log x (a weight is searched log-uniformly) spanning at least a decade, ticks written
    plainly (``0.001``, ``10``), as many as fit a column-wide figure without touching: at 1, 2,
    5 × 10^k over a narrow span, else at powers of ten."""
    if len(x) == 0 or (x <= 0).any():
        ax.set_xscale("symlog")
        return
    ax.set_xscale("log")
    low, high = x.min(), x.max()
    if high / low < 10:
        middle = np.sqrt(low * high)
        ax.set_xlim(middle / np.sqrt(10) / 1.2, middle * np.sqrt(10) * 1.2)
    decades = np.log10(high / low)
    subs = (1.0, 2.0, 5.0) if decades <= DENSE_DECADES else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs,
                                          numticks=MAX_LABELLED_DECADES + 2))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def metric_label(options: ReportOptions) -> str:
    return METRIC_NAMES.get(options.metric, options.metric)
