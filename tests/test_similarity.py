"""Similarity functions against hand-made cases and a direct numpy evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from otbench.errors import ConfigError
from otbench.methods import ot_distance
from otbench.methods.similarity import (
    column_entropy,
    identity_distance,
    linear_cka,
    matching_stability,
    plan_matching,
    unbiased_cka,
)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def test_cka_of_a_representation_with_itself_is_one() -> None:
    x = rand(20, 6, 3, 3)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert unbiased_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_maps_and_isotropic_scaling() -> None:
    x, y = rand(30, 8, seed=1), rand(30, 5, seed=2)
    q, _ = torch.linalg.qr(rand(8, 8, seed=3))
    base = linear_cka(x, y).item()
    assert linear_cka(x @ q * 7.5, y).item() == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, y * 0.01).item() == pytest.approx(base, rel=1e-10)
    assert unbiased_cka(x @ q * 3, y).item() == pytest.approx(unbiased_cka(x, y).item(),
                                                              rel=1e-10)


def test_linear_cka_matches_the_feature_space_formula() -> None:
    x, y = rand(25, 7, seed=4).numpy(), rand(25, 4, seed=5).numpy()
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = (np.linalg.norm(yc.T @ xc) ** 2
                / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)).item() == pytest.approx(
        expected, rel=1e-10)


def numpy_unbiased_hsic(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. 2012, eq. (5), written out term by term with explicit loops."""
    n = len(k)
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    trace = sum(kt[i, j] * lt[j, i] for i in range(n) for j in range(n))
    total = kt.sum() * lt.sum() / ((n - 1) * (n - 2))
    cross = 2 / (n - 2) * sum(kt[i, :] @ lt[:, j] for i in range(n) for j in range(n))
    return (trace + total - cross) / (n * (n - 3))


def test_unbiased_cka_matches_a_direct_numpy_evaluation() -> None:
    x, y = rand(12, 5, seed=6).numpy(), rand(12, 9, seed=7).numpy()
    k, l_ = x @ x.T, y @ y.T
    expected = numpy_unbiased_hsic(k, l_) / np.sqrt(numpy_unbiased_hsic(k, k)
                                                   * numpy_unbiased_hsic(l_, l_))
    assert unbiased_cka(torch.from_numpy(x), torch.from_numpy(y)).item() == pytest.approx(
        expected, rel=1e-9)


def test_identity_distance_bounds_ot_and_equals_it_on_identical_inputs() -> None:
    t, s = rand(6, 10, 3, 3, seed=8), rand(6, 10, 3, 3, seed=9)
    assert identity_distance(t, s).item() >= ot_distance(t, s).item()
    assert identity_distance(t, t).item() == pytest.approx(0.0, abs=1e-12)
    assert ot_distance(t, t).item() == pytest.approx(0.0, abs=1e-12)
    by_hand = ((t - s) ** 2).sum(dim=(0, 2, 3)).mean() / (6 * 9)
    assert identity_distance(t, s).item() == pytest.approx(by_hand.item(), rel=1e-12)


def test_matching_stability_and_entropy_on_hand_made_plans() -> None:
    permutation = torch.tensor([[0, 0.5, 0], [0.5, 0, 0], [0, 0, 0]])[:2, :2]
    assert plan_matching(permutation).tolist() == [1, 0]
    assert column_entropy(permutation).item() == pytest.approx(0.0)
    spread = torch.full((4, 2), 1 / 8)
    assert column_entropy(spread).item() == pytest.approx(np.log(4))
    same = torch.tensor([3, 1, 2])
    assert matching_stability(same, same.clone()) == 0.0
    assert matching_stability(same, torch.tensor([1, 2, 3])) == 1.0
    assert matching_stability(same, torch.tensor([3, 2, 2])) == pytest.approx(1 / 3)


@pytest.mark.parametrize("cka", [linear_cka, unbiased_cka])
def test_cka_of_batches_of_different_examples_is_refused(cka) -> None:
    x, y = torch.randn(6, 3), torch.randn(5, 3)
    with pytest.raises(ConfigError, match="same examples on both sides, got batches of 6 and 5"):
        cka(x, y)
