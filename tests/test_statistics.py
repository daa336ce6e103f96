"""The report's statistics against hand computations, scipy on constructed cases and Demšar
(2006)'s published example."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from otbench.reports import statistics

#: Demšar (2006), Table 6: AUC of C4.5 and three variants on 14 data sets. The paper prints
#: voting's C4.5+cf and C4.5+m+cf both as 0.975 but ranks C4.5+cf ahead (its published ranks
#: come from unrounded values), hence 0.97501 here.
DEMSAR = pd.DataFrame(
    [[0.763, 0.768, 0.771, 0.798], [0.599, 0.591, 0.590, 0.569], [0.954, 0.971, 0.968, 0.967],
     [0.628, 0.661, 0.654, 0.657], [0.882, 0.888, 0.886, 0.898], [0.936, 0.931, 0.916, 0.931],
     [0.661, 0.668, 0.609, 0.685], [0.583, 0.583, 0.563, 0.625], [0.775, 0.838, 0.866, 0.875],
     [1.000, 1.000, 1.000, 1.000], [0.940, 0.962, 0.965, 0.962], [0.619, 0.666, 0.614, 0.669],
     [0.972, 0.981, 0.97501, 0.975], [0.957, 0.978, 0.946, 0.970]],
    columns=["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"])


def test_paired_values_align_on_shared_seeds() -> None:
    mine = pd.Series([1.0, 2.0, 3.0], index=[2, 0, 1])
    reference = pd.Series([10.0, 30.0, 40.0], index=[0, 2, 3])
    a, b = statistics.paired_values(mine, reference)
    assert a.tolist() == [2.0, 1.0] and b.tolist() == [10.0, 30.0]


def test_mean_difference_ci_by_hand() -> None:
    d = np.array([-15.0, -11.0, -10.0])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)  # 4.303 * 2.646 / 1.732
    result = statistics.mean_difference(d)
    assert result == pytest.approx((-12.0, -12.0 - half, -12.0 + half))
    assert result.low == pytest.approx(-18.572, abs=1e-3)
    assert statistics.mean_difference(np.array([2.0, 2.0])) == (2.0, 2.0, 2.0)
    assert np.isnan(statistics.mean_difference(np.array([1.0])).low)


def test_paired_tests_on_a_constructed_case() -> None:
    """Pairing finds a shift that the seeds' spread hides from an unpaired test."""
    reference = np.array([70.0, 80.0, 90.0, 75.0, 85.0, 60.0])
    shift = np.array([1.0, 2.0, 1.5, 1.0, 2.5, 1.5])
    values = reference + shift
    t = statistics.p_value(values, reference, "paired-t")
    diff = shift - shift.mean()
    by_hand = shift.mean() / (np.sqrt((diff ** 2).sum() / 5) / np.sqrt(6))
    assert t == pytest.approx(2 * stats.t.sf(by_hand, 5))
    assert t == pytest.approx(stats.ttest_rel(values, reference).pvalue)
    assert t < 0.01
    # Signed-rank: all six differences positive, exact null distribution: 2 / 2**6.
    assert statistics.p_value(values, reference, "wilcoxon") == pytest.approx(2 / 64)
    assert statistics.p_value(values, reference, "mannwhitney") > 0.5
    assert statistics.p_value(reference, reference, "paired-t") == 1.0
    assert statistics.p_value(reference, reference, "wilcoxon") == 1.0
    assert np.isnan(statistics.p_value(values[:1], reference[:1], "paired-t"))
    with pytest.raises(ValueError, match="unknown test 'welch'"):
        statistics.p_value(values, reference, "welch")


def test_holm_on_a_known_example() -> None:
    """Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; the last is
    raised to the running maximum 0.06."""
    adjusted = statistics.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert statistics.holm([0.6, np.nan, 0.3]) == pytest.approx([0.6, np.nan, 0.6],
                                                                nan_ok=True)
    assert statistics.holm([0.9, 0.8]).tolist() == [1.0, 1.0]


def test_detectable_difference_matches_power_tables() -> None:
    """G*Power's one-sample (paired) t-test: d = 0.5, alpha 0.05 two-sided, power 0.8 needs
    34 pairs, whose power is 0.8078; with many pairs the normal approximation
    (z_0.975 + z_0.8) / sqrt(n) holds."""
    assert statistics.paired_power(0.5, 34) == pytest.approx(0.8078, abs=1e-4)
    assert statistics.detectable_difference(1.0, 34) < 0.5 < statistics.detectable_difference(
        1.0, 33)
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert statistics.detectable_difference(2.0, 2000) == pytest.approx(2.0 * z / np.sqrt(2000),
                                                                        rel=2e-3)
    assert statistics.detectable_difference(3.0, 10) == pytest.approx(
        3 * statistics.detectable_difference(1.0, 10))
    assert np.isnan(statistics.detectable_difference(0.0, 10))
    assert np.isnan(statistics.detectable_difference(1.0, 1))


def test_detectable_difference_by_simulation() -> None:
    """At the detectable difference, simulated paired t-tests reject about 80 % of the time."""
    rng = np.random.default_rng(0)
    n, sd = 6, 1.5
    delta = statistics.detectable_difference(sd, n)
    samples = rng.normal(delta, sd, size=(20000, n))
    rejected = stats.ttest_1samp(samples, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)


def test_ranks_friedman_and_critical_difference_on_demsar() -> None:
    """Demšar (2006), section 3.2.2: average ranks 3.143, 2.000, 2.893, 1.964; chi2_F = 9.28
    from the ranks (without scipy's tie correction); CD = 2.569 sqrt(4 * 5 / (6 * 14)) =
    1.25 for the Nemenyi test at alpha 0.05."""
    ranks = statistics.average_ranks(DEMSAR)
    assert ranks.round(3).tolist() == [3.143, 2.000, 2.893, 1.964]
    k, n = 4, 14
    chi2 = 12 * n / (k * (k + 1)) * ((ranks ** 2).sum() - k * (k + 1) ** 2 / 4)
    assert chi2 == pytest.approx(9.28, abs=0.005)
    # scipy divides by 1 - sum(t^3 - t) / (n k (k^2 - 1)) over tied groups: mushroom (4 tied),
    # lung cancer, iris and primary tumor (2 each).
    ties = (4 ** 3 - 4) + 3 * (2 ** 3 - 2)
    result = statistics.friedman(DEMSAR)
    assert result.statistic == pytest.approx(chi2 / (1 - ties / (n * k * (k * k - 1))))
    assert result.p_value == pytest.approx(stats.chi2.sf(result.statistic, k - 1))
    assert statistics.nemenyi_critical_difference(4, 14) == pytest.approx(1.25, abs=0.005)
