"""Statistics that can tell methods apart: paired differences to a reference method, their
confidence interval and tests, Holm's correction, the smallest difference the seeds could
detect, and ranks across tasks (Friedman test, Nemenyi critical difference; Demšar 2006).

Every method of a result column trains on the same split with the same seeds, so seed ``s``
of a method and seed ``s`` of the reference form a pair: the pairing removes the share of the
spread that the seed (initialisation, batch order, data draw) causes in both. Pure functions
on arrays and frames, so each can be checked against scipy or a published example.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .options import TESTS


def paired_values(values: pd.Series, reference: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The two series (indexed by seed) on the seeds they share, in seed order."""
    seeds = values.index.intersection(reference.index).sort_values()
    return values.loc[seeds].to_numpy(float), reference.loc[seeds].to_numpy(float)


class MeanDifference(NamedTuple):
    mean: float
    low: float
    high: float


def mean_difference(differences: np.ndarray, confidence: float = 0.95) -> MeanDifference:
    """The mean of paired differences with its t-based confidence interval; NaN bounds below
    two pairs, and a zero-width interval when every difference is the same."""
    d = np.asarray(differences, float)
    if len(d) == 0:
        return MeanDifference(float("nan"), float("nan"), float("nan"))
    mean = float(d.mean())
    if len(d) < 2:
        return MeanDifference(mean, float("nan"), float("nan"))
    if np.all(d == d[0]):
        return MeanDifference(mean, mean, mean)
    low, high = stats.ttest_1samp(d, 0.0).confidence_interval(confidence)
    return MeanDifference(mean, float(low), float(high))


def p_value(values: np.ndarray, reference: np.ndarray, test: str) -> float:
    """Two-sided p-value of ``values`` against ``reference`` (paired element by element for
    ``paired-t`` and ``wilcoxon``). NaN below two pairs (two samples per side), where no
    test says anything; 1 when every paired difference is exactly zero (identical runs give
    no evidence of a difference, while scipy would answer NaN)."""
    values, reference = np.asarray(values, float), np.asarray(reference, float)
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; valid: {', '.join(TESTS)}")
    if len(values) < 2 or len(reference) < 2:
        return float("nan")
    if test != "mannwhitney" and np.all(values == reference):
        return 1.0
    with warnings.catch_warnings():  # constant samples: scipy warns, the result is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == "paired-t":
            result = stats.ttest_rel(values, reference)
        elif test == "wilcoxon":
            result = stats.wilcoxon(values, reference)
        else:
            result = stats.mannwhitneyu(values, reference, alternative="two-sided")
    return float(result.pvalue)


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control); NaNs are left out of
    the family and stay NaN. scipy's ``false_discovery_control`` offers only the
    Benjamini-Hochberg/Yekutieli false-discovery rates, not Holm."""
    p = np.asarray(p_values, float)
    adjusted = np.full_like(p, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    m = len(present)
    if m == 0:
        return adjusted
    order = present[np.argsort(p[present], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def paired_power(effect: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs to detect a standardized mean
    difference ``effect`` (mean / sd of the differences), from the noncentral t."""
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * np.sqrt(n)
    # The lower tail as the upper one of -nc: scipy's cdf answers NaN for some large nc.
    return float(stats.nct.sf(critical, df, nc) + stats.nct.sf(critical, df, -nc))


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference that a two-sided paired t-test on ``n`` pairs whose
    differences spread by ``sd`` detects with probability ``power``; NaN below two pairs or
    without a spread."""
    if n < 2 or not np.isfinite(sd) or sd <= 0:
        return float("nan")
    high = 1.0
    while paired_power(high, n, alpha) < power:
        high *= 2
    effect = optimize.brentq(lambda e: paired_power(e, n, alpha) - power, 0.0, high,
                             xtol=1e-10)
    return float(effect * sd)


# ---------------------------------------------------------------------------- across tasks
def average_ranks(scores: pd.DataFrame) -> pd.Series:
    """Each method's (column's) mean rank over tasks (rows), 1 = best = highest score, ties
    sharing the mean of their ranks (Demšar 2006, section 3.2.2)."""
    return scores.rank(axis=1, ascending=False, method="average").mean().rename("rank")


class Friedman(NamedTuple):
    statistic: float
    p_value: float


def friedman(scores: pd.DataFrame) -> Friedman:
    """Friedman's test that all methods (columns) rank alike over the tasks (rows), with
    scipy's correction for ties."""
    result = stats.friedmanchisquare(*(scores[c].to_numpy(float) for c in scores.columns))
    return Friedman(float(result.statistic), float(result.pvalue))


def nemenyi_critical_difference(methods: int, tasks: int, alpha: float = 0.05) -> float:
    """Average ranks further apart than this differ at level ``alpha`` (Nemenyi test):
    q_alpha sqrt(k (k + 1) / (6 N)), q_alpha the studentized range quantile over sqrt 2."""
    q = stats.studentized_range.ppf(1 - alpha, methods, np.inf) / np.sqrt(2)
    return float(q * np.sqrt(methods * (methods + 1) / (6 * tasks)))
