"""Paper-ready figures. Each builder returns a :class:`~matplotlib.figure.Figure` (so tests and
notebooks can inspect or restyle it) and :func:`save_figure` writes it as PNG and vector PDF.

Figures are made with ``Figure()`` directly, not pyplot: no global figure list to leak, no
display needed. Every method keeps one color in every figure (:func:`method_color`), and sizes
and fonts are set for a paper column (~3.3 in) so a figure reads at print size.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import multiprocessing
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, StrMethodFormatter

from .options import ReportOptions, split_task
from .tables import METRIC_NAMES, Column, ResultTable

#: One column of a two-column paper, and the full text width.
COLUMN_WIDTH = 3.3
TEXT_WIDTH = 6.9
HEIGHT = 2.3

STYLE: dict[str, Any] = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.3, "lines.markersize": 4,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "grid.linewidth": 0.5, "legend.frameon": False,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType: text stays text in the PDF
    "savefig.dpi": 200, "savefig.pad_inches": 0.02,
    "figure.autolayout": False, "figure.constrained_layout.use": False,  # layouts set per figure
}

#: Fixed colors of known methods (the paper's in red, the plain baseline gray).
METHOD_COLORS = {"ot": "#d62728", "finetune": "#7f7f7f", "l2sp": "#1f77b4", "kd": "#ff7f0e",
                 "fitnets": "#2ca02c", "at": "#9467bd", "delta": "#17becf", "bss": "#bcbd22",
                 "rkd": "#8c564b", "sp": "#e377c2", "pkt": "#393b79", "nst": "#637939",
                 "cka": "#8c6d31", "crd": "#843c39"}
#: Colors a plugin method may get: distinct from the fixed ones above.
FALLBACK_COLORS = ("#6b6ecf", "#b5cf6b", "#e7ba52", "#d6616b", "#ce6dbd", "#3182bd",
                   "#31a354", "#756bb1", "#636363", "#e6550d", "#9c9ede", "#cedb9c")

P = ParamSpec("P")
R = TypeVar("R")


def method_color(method: str) -> str:
    """A method's color: fixed for known methods, else chosen by a stable hash of its name,
    so a plugin keeps its color across figures, reports and machines (unlike ``hash()``)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    digest = int(hashlib.sha256(method.encode()).hexdigest(), 16)
    return FALLBACK_COLORS[digest % len(FALLBACK_COLORS)]


@contextmanager
def paper_style() -> Iterator[None]:
    with mpl.rc_context(STYLE):
        yield


def styled(builder: Callable[P, R]) -> Callable[P, R]:
    """Build a figure under :data:`STYLE` without changing the caller's rcParams."""
    @wraps(builder)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with paper_style():
            return builder(*args, **kwargs)
    return wrapper


def save_figure(fig: Figure, folder: Path, stem: str, keep: Path | None = None) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf``; the PDF has no creation date, so re-running a
    report on the same runs gives the same file. ``keep``: a copy of both goes there too (a
    :class:`FigureWriter`'s cache; the suffixes are added)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = figure_paths(folder, stem)
    with paper_style():
        fig.savefig(paths[0])
        # The PNG's draw laid the figure out; the PDF (same size and fonts) reuses that. No
        # engine at all (not "none", a placeholder) also spares the PDF a layout draw pass.
        fig.set_layout_engine(None)
        fig.savefig(paths[1], metadata={"CreationDate": None})
    if keep is not None:
        keep.parent.mkdir(parents=True, exist_ok=True)
        for path, kept in zip(paths, figure_paths(keep.parent, keep.name), strict=True):
            partial = kept.with_name(f".{kept.name}.{os.getpid()}")
            shutil.copyfile(path, partial)
            os.replace(partial, kept)  # whole or absent, for a reader in another process
    return paths


@functools.cache
def drawing_code() -> str:
    """A hash of what draws the report's figures besides their data: this package's source,
    matplotlib's version and the style. A cached figure is reused only under the same."""
    digest = hashlib.sha256(f"{mpl.__version__} {sorted(STYLE.items())}".encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def content_key(*parts: object) -> str:
    """A key for everything a figure is drawn from: frames by their content (values, index,
    columns), arrays by their bytes, anything else by its ``repr``; and :func:`drawing_code`.
    """
    digest = hashlib.sha256(drawing_code().encode())
    for part in parts:
        if isinstance(part, pd.DataFrame):
            digest.update(pd.util.hash_pandas_object(part, index=True).to_numpy().tobytes())
            digest.update(repr(list(part.columns)).encode())
        elif isinstance(part, np.ndarray):
            digest.update(f"{part.dtype.str}{part.shape}".encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


@contextmanager
def frozen_gc() -> Iterator[None]:
    """Keep the objects alive now out of Python's full garbage collections while the block
    runs. A full collection walks every tracked object: in a report's process, the hundreds
    of thousands that torch, MLflow, pandas and matplotlib keep, about 0.5 s each, three times
    in a quick-suite report, triggered by the objects its figures allocate. Frozen
    (``gc.freeze``), they are not walked; the figures' own reference cycles are still
    collected. Not nestable: leaving the block unfreezes everything."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _start_figure_worker() -> None:
    """A drawing process's imports (this module's, matplotlib's) live as long as it does:
    freeze them (see :func:`frozen_gc`) before its first figure."""
    gc.freeze()


def default_figure_workers() -> int:
    """Processes the command line draws a report's figures on: the cores, at most 4."""
    return min(os.cpu_count() or 1, 4)


class FigureWriter:
    """Writes a report's figures as PNG and PDF, optionally on several processes, and reuses
    figures drawn before from the same data.

    Drawing is most of a report's time and every figure is independent. With ``workers``
    > 1, :meth:`add` pickles the figure and hands it to a pool of spawned processes at once,
    so they draw while this process builds the next figures; :meth:`close` (or leaving the
    ``with`` block) waits for them. A figure that cannot be pickled is drawn here. The
    default, one worker, draws each figure here when added: spawned workers re-import a
    script's main module, which is only safe behind ``if __name__ == "__main__"`` (as in
    the ``otbench`` command).

    With a ``cache`` folder, a figure added with a key (:func:`content_key` of what it is
    drawn from) is kept there under it, and a later figure of that key is copied from there
    instead of being built and drawn (a sweep draws a result column's figures this way while
    its other columns train). :meth:`prune` drops the kept figures this writer did not use.
    """

    def __init__(self, workers: int = 1, cache: Path | None = None) -> None:
        if workers < 1:
            raise ValueError(f"figure workers must be at least 1, got {workers}")
        self.workers = workers
        self.cache = cache
        self.used: set[str] = set()
        self.pool: ProcessPoolExecutor | None = None
        self.jobs: list[Future[list[Path]]] = []

    def add(self, fig: Figure | Callable[[], Figure], folder: Path, stem: str,
            key: str | None = None) -> list[Path]:
        """Write (or start writing) ``fig``, or the figure it builds; returns the PNG and PDF
        paths it will have. With a ``key`` and a cache, a kept figure is copied instead."""
        keep = None
        if key is not None and self.cache is not None:
            self.used.add(key)
            keep = self.cache / key
            kept = figure_paths(self.cache, key)
            if all(path.is_file() for path in kept):
                folder.mkdir(parents=True, exist_ok=True)
                for source, path in zip(kept, figure_paths(folder, stem), strict=True):
                    shutil.copyfile(source, path)
                return figure_paths(folder, stem)
        if not isinstance(fig, Figure):
            fig = fig()
        try:
            payload = pickle.dumps(fig) if self.workers > 1 else None
        except (pickle.PicklingError, TypeError, AttributeError):
            payload = None
        if payload is None:
            return save_figure(fig, folder, stem, keep)
        if self.pool is None:
            context = multiprocessing.get_context("spawn")  # no forked threads or DB handles
            self.pool = ProcessPoolExecutor(self.workers, mp_context=context,
                                            initializer=_start_figure_worker)
        self.jobs.append(self.pool.submit(save_pickled_figure, payload, folder, stem, keep))
        return figure_paths(folder, stem)

    def prune(self) -> None:
        """Drop the cache's figures whose key this writer did not use: a report keeps those
        of its own figures only."""
        if self.cache is None or not self.cache.is_dir():
            return
        for path in self.cache.iterdir():
            if path.name.split(".")[0] not in self.used:
                path.unlink(missing_ok=True)

    def close(self, cancel: bool = False) -> None:
        """Wait for every figure (a worker's exception is raised here), or cancel them."""
        jobs, self.jobs = self.jobs, []
        pool, self.pool = self.pool, None
        if pool is None:
            return
        try:
            if not cancel:
                for job in jobs:
                    job.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FigureWriter:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        self.close(cancel=kind is not None)


def save_pickled_figure(payload: bytes, folder: Path, stem: str,
                        keep: Path | None = None) -> list[Path]:
    """A :class:`FigureWriter` worker's job."""
    return save_figure(pickle.loads(payload), folder, stem, keep)


def figure_paths(folder: Path, stem: str) -> list[Path]:
    return [folder / f"{stem}.png", folder / f"{stem}.pdf"]


def new_figure(width: float = COLUMN_WIDTH, height: float = HEIGHT) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def legend_above(fig: Figure, ax: Axes) -> None:
    """Legend above the axes, outside the data, in as few rows as fit the width."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4))


def _band(ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, color: str,
          label: str, marker: str | None = None) -> None:
    """A mean line with a ±std band (no band where std is undefined: a single seed)."""
    ax.plot(x, mean, color=color, label=label, marker=marker)
    if np.isfinite(std).any():
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def _accuracy_axis(ax: Axes, lows: list[float]) -> None:
    """Start the accuracy axis a little under the lowest bar (not at 0, where differences of a
    point between methods would be invisible) and never above 100 %."""
    low = min(lows) if lows else 0.0
    ax.set_ylim(bottom=max(0.0, 5 * np.floor((low - 2) / 5)))


# ---------------------------------------------------------------------------- figures
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
    ax.set_ylabel(f"{_metric_label(opts)} (%)")
    ax.set_title(opts.scenario_label(scenario))
    ax.grid(axis="x", visible=False)
    _accuracy_axis(ax, lows)
    legend_above(fig, ax)
    return fig


def in_column(runs: pd.DataFrame, column: Column) -> pd.Series:
    """Which runs belong to a result column."""
    return ((runs.scenario == column.scenario) & (runs.entry == column.entry)
            & (runs.task == column.task))


def title(table: ResultTable, column: Column) -> str:
    return f"{table.options.scenario_label(column.scenario)} · {table.label(column)}"


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
        _band(ax, per_seed.index.to_numpy(), per_seed.mean(axis=1).to_numpy() * opts.scale,
              per_seed.std(axis=1).to_numpy() * opts.scale, method_color(method),
              opts.method_label(method))
    ax.set_xlabel("Epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("Validation accuracy (%)")
    ax.set_title(title(table, column))
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
        _band(ax, rows.per_class.to_numpy(float), rows["mean"].to_numpy(),
              rows["std"].to_numpy(), method_color(method), opts.method_label(method),
              marker="o")
    sizes = sorted(cells.per_class.unique())
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(int(s)) for s in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("Training samples per class")
    ax.set_ylabel(f"{_metric_label(opts)} (%)")
    ax.set_title(f"{opts.scenario_label(scenario)} · {opts.task_label(family)}")
    legend_above(fig, ax)
    return fig


def sensitivity_data(runs: pd.DataFrame, column: Column, method: str = "ot",
                     param: str = "params.weight") -> pd.DataFrame:
    """Finished sweep trials of one method in one column with the param set."""
    if param not in runs or "val/acc_final" not in runs:
        return runs.iloc[0:0]
    keep = ((runs.stage == "trial") & (runs.status == "FINISHED") & (runs.method == method)
            & in_column(runs, column) & runs[param].notna() & runs["val/acc_final"].notna())
    return runs[keep]


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
    ax.set_title(title(table, column))
    legend_above(fig, ax)
    return fig


def _weight_axis(ax: Axes, x: np.ndarray) -> None:
    """Log x (a weight is searched log-uniformly) spanning at least a decade, ticks at 1, 2, 5
    × 10^k written plainly: with a narrower span matplotlib would label crowded minor ticks
    in scientific notation."""
    if len(x) == 0 or (x <= 0).any():
        ax.set_xscale("symlog")
        return
    ax.set_xscale("log")
    low, high = x.min(), x.max()
    if high / low < 10:
        middle = np.sqrt(low * high)
        ax.set_xlim(middle / np.sqrt(10) / 1.2, middle * np.sqrt(10) * 1.2)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _metric_label(options: ReportOptions) -> str:
    return METRIC_NAMES.get(options.metric, options.metric)
