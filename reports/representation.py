"""Representation diagnostics of the final runs (issue #9): how close each student ends to its
teacher, how its neuron matching settles, and whether that tracks test accuracy.

Every training run logs, per layer pair keyed by the student layer, ``diag/ot/<layer>`` and
``diag/cka/<layer>`` at steps 0..E, ``diag/stability/<layer>`` at steps 1..E, and a
``diagnostics.npz`` artifact with the matchings, entropies and identity distances of every
recorded epoch and the transport plans of the first and last
(:mod:`otbench.benchmark.diagnostics`); ``diagnostics_every: k`` leaves gaps between the
recorded steps. This module turns them into the numbers the figures
(:mod:`.figures.diagnostics`) draw and a paragraph whose every statement is computed from them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from .collect import CONFIG_PREFIX
from .tables import Column, ResultTable, in_column

DIAG_PREFIX = "diag/"
#: Per-epoch quantities plotted, with their axis labels.
QUANTITIES = {"ot": "OT distance to teacher", "cka": "Linear CKA with teacher",
              "stability": "Neurons re-matched (fraction)"}
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
        head = table.title(Column(row.scenario, row.entry, row.task))
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


@dataclass(frozen=True)
class CurveData:
    """Everything a column's curve grid is drawn from (:func:`curve_data`)."""

    per_step: pd.DataFrame  # mean and std over the runs, by key, method and step
    methods: tuple[tuple[str, str], ...]  # (method, label), in table order
    quantities: tuple[str, ...]
    layers: tuple[str, ...]
    heading: str


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
    return CurveData(per_step, tuple((m, opts.method_label(m)) for m in methods),
                     tuple(quantities), tuple(layers), table.title(column))


