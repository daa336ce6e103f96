"""What every report figure shares: the paper style, method colors, sizes, and writing a
figure as PNG and vector PDF.

Figures are made with ``Figure()`` directly, not pyplot: no global figure list to leak, no
display needed. Every method keeps one color in every figure (:func:`method_color`), and sizes
and fonts are set for a paper column (~3.3 in) so a figure reads at print size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

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
}

#: Fixed colors of known methods (the paper's in red, the plain baseline gray).
METHOD_COLORS = {"ot": "#d62728", "finetune": "#7f7f7f", "l2sp": "#1f77b4", "kd": "#ff7f0e",
                 "fitnets": "#2ca02c", "at": "#9467bd", "delta": "#17becf", "bss": "#bcbd22",
                 "rkd": "#8c564b", "sp": "#e377c2", "pkt": "#393b79", "nst": "#637939",
                 "cka": "#8c6d31", "crd": "#843c39"}
#: Colors a plugin method may get: each at least 0.22 (RGB distance) from every fixed color
#: above and from each other, so no plugin passes for a built-in method (a gray would pass
#: for Fine-tune).
FALLBACK_COLORS = ("#000000", "#b5cf6b", "#e7ba52", "#9c9ede", "#8ca252", "#f7b6d2",
                   "#9edae5", "#d6616b", "#cedb9c")
#: Colors of the methods without a fixed one in the report being drawn (see
#: :func:`method_palette`).
_PALETTE: ContextVar[Mapping[str, str] | None] = ContextVar("method_palette", default=None)

P = ParamSpec("P")
R = TypeVar("R")


def method_color(method: str) -> str:
    """A method's color: fixed for known methods; for a plugin, its color in the active
    :func:`method_palette`, else one chosen by a stable hash of its name (unlike ``hash()``,
    the same on every machine)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    palette = _PALETTE.get() or {}
    if method in palette:
        return palette[method]
    digest = int(hashlib.sha256(method.encode()).hexdigest(), 16)
    return FALLBACK_COLORS[digest % len(FALLBACK_COLORS)]


@contextmanager
def method_palette(methods: Iterable[str]) -> Iterator[None]:
    """Within it, the methods without a fixed color get :data:`FALLBACK_COLORS` in the order
    of their names: distinct from each other (up to that many plugins) in every figure of a
    report, where hashing could give two plugins one color."""
    plugins = sorted({m for m in methods if m not in METHOD_COLORS})
    token = _PALETTE.set({m: FALLBACK_COLORS[i % len(FALLBACK_COLORS)]
                          for i, m in enumerate(plugins)})
    try:
        yield
    finally:
        _PALETTE.reset(token)


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


def save_figure(fig: Figure, folder: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf``; the PDF has no creation date, so re-running a
    report on the same runs gives the same file."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = figure_paths(folder, stem)
    with paper_style():
        fig.savefig(paths[0])
        fig.savefig(paths[1], metadata={"CreationDate": None})
    return paths


def figure_paths(folder: Path, stem: str) -> list[Path]:
    return [folder / f"{stem}.png", folder / f"{stem}.pdf"]


def new_figure(width: float = COLUMN_WIDTH, height: float = HEIGHT) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def panels(rows: int, columns: int, height: float = HEIGHT, width: float | None = None,
           sharex: str | bool = False) -> tuple[Figure, np.ndarray]:
    """A grid of axes (always 2-D) under constrained layout."""
    width = width or min(TEXT_WIDTH, max(COLUMN_WIDTH, 2.2 * columns))
    fig = Figure(figsize=(width, height * rows), layout="constrained")
    return fig, fig.subplots(rows, columns, squeeze=False, sharex=sharex)


def legend_above(fig: Figure, ax: Axes) -> None:
    """Legend above the axes, outside the data, in as few rows as fit the width."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4))


def band(ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, color: str,
         label: str, marker: str | None = None) -> None:
    """A mean line with a ±std band (no band where std is undefined: a single seed)."""
    ax.plot(x, mean, color=color, label=label, marker=marker)
    if np.isfinite(std).any():
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
