"""The method zoo (issue #7) against independent computations on hand-made tensors.

Each method's value is recomputed with numpy/scipy/POT, written differently from the
implementation (explicit loops, eigenvalues instead of singular values, dual instead of primal
Sinkhorn values...); then gradients, applicability and the OT variants' properties.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.special import logsumexp
from torch import nn

from otbench.errors import ConfigError
from otbench.methods import LayerPair, StepOutputs, TransferContext, get_method, ot_distance
from otbench.methods.base import check_applicable
from otbench.methods.cka import linear_cka
from otbench.methods.crd import nce_loss
from otbench.methods.ot import OTSolverWarning
from otbench.methods.ot_sinkhorn_div import sinkhorn_divergence_features
from otbench.methods.ot_sliced import quantile_w2, random_directions, sliced_w2
from otbench.methods.ot_unbalanced import unbalanced_cost

ZOO = ("delta", "bss", "rkd", "sp", "pkt", "nst", "cka", "crd", "ot-sinkhorn-div", "ot-sliced",
       "ot-unbalanced")


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def context(pairs=(), **kwargs) -> TransferContext:
    kwargs.setdefault("teacher", nn.Identity())
    kwargs.setdefault("student", nn.Identity())
    return TransferContext(pairs=list(pairs), **kwargs)


def step(student: dict, teacher: dict, targets=None) -> StepOutputs:
    batch = next(iter(student.values())).shape[0]
    targets = torch.zeros(batch, dtype=torch.long) if targets is None else targets
    return StepOutputs(student_logits=torch.zeros(batch, 3), targets=targets,
                       student_features=student, teacher_features=teacher)


def pooled_np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().mean(axis=(2, 3))


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 1e-12 else np.zeros_like(v)


# --------------------------------------------------------------------------- values


def test_rkd_matches_explicit_loops() -> None:
    t, s = rand(5, 6, 2, 2, seed=1), rand(5, 3, 2, 2, seed=2) * 3
    pair = LayerPair("t", "s", (6, 2, 2), (3, 2, 2))
    terms = get_method("rkd")(context([pair]), distance_weight=2.0, angle_weight=3.0)(
        step({"s": s}, {"t": t}))
    e_t, e_s = pooled_np(t), pooled_np(s)
    b = len(e_t)

    def potential_d(e: np.ndarray) -> np.ndarray:
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(b)] for i in range(b)])
        return d / (d.sum() / (b * (b - 1)))

    def potential_a(e: np.ndarray) -> np.ndarray:
        a = np.zeros((b, b, b))
        for j in range(b):
            for i in range(b):
                for k in range(b):
                    a[j, i, k] = unit(e[i] - e[j]) @ unit(e[k] - e[j])
        return a

    dist = np.mean([huber(x) for x in (potential_d(e_s) - potential_d(e_t)).ravel()])
    angle = np.mean([huber(x) for x in (potential_a(e_s) - potential_a(e_t)).ravel()])
    assert terms["rkd/distance"].item() == pytest.approx(2.0 * dist, rel=1e-9)
    assert terms["rkd/angle"].item() == pytest.approx(3.0 * angle, rel=1e-9)


@pytest.mark.parametrize(("batch", "k"), [(5, 1), (5, 2), (12, 3)])
def test_bss_matches_eigenvalues_of_the_smaller_gram(batch: int, k: int) -> None:
    s = rand(batch, 7, 3, 3, seed=3)
    pair = LayerPair("t", "s", (7, 3, 3), (7, 3, 3))
    method = get_method("bss")(context([pair]), weight=0.5, k=k)
    value = method(step({"s": s}, {}))["bss/s"].item()
    f = pooled_np(s)
    gram = f @ f.T if f.shape[0] <= f.shape[1] else f.T @ f
    expected = np.sort(np.linalg.eigvalsh(gram))[:k].sum()
    assert value == pytest.approx(0.5 * expected, rel=1e-8, abs=1e-12)


def test_bss_needs_no_teacher() -> None:
    assert get_method("bss").reads == frozenset({"student_features"})


def test_sp_matches_explicit_loops() -> None:
    t, s = rand(4, 6, 4, 4, seed=4), rand(4, 3, 2, 2, seed=5)
    pair = LayerPair("t", "s", (6, 4, 4), (3, 2, 2), weight=0.5)
    value = get_method("sp")(context([pair]), weight=10.0)(step({"s": s}, {"t": t}))["sp/s"]

    def normalized_gram(x: torch.Tensor) -> np.ndarray:
        q = x.numpy().reshape(len(x), -1)
        g = np.array([[q[i] @ q[j] for j in range(len(q))] for i in range(len(q))])
        return np.stack([row / np.linalg.norm(row) for row in g])

    expected = ((normalized_gram(t) - normalized_gram(s)) ** 2).sum() / 16
    assert value.item() == pytest.approx(10.0 * 0.5 * expected, rel=1e-9)


def test_pkt_matches_explicit_formula() -> None:
    t, s = rand(6, 5, 2, 2, seed=6), rand(6, 3, 2, 2, seed=7)
    pair = LayerPair("t", "s", (5, 2, 2), (3, 2, 2))
    value = get_method("pkt")(context([pair]), weight=100.0)(step({"s": s}, {"t": t}))["pkt/s"]

    def probabilities(e: np.ndarray) -> np.ndarray:
        k = np.array([[(unit(x) @ unit(y) + 1) / 2 for y in e] for x in e])
        return k / k.sum(axis=1, keepdims=True)

    p_t, p_s = probabilities(pooled_np(t)), probabilities(pooled_np(s))
    expected = np.mean(p_t * np.log((p_t + 1e-7) / (p_s + 1e-7)))
    assert value.item() == pytest.approx(100.0 * expected, rel=1e-6)


def test_nst_matches_explicit_mmd_with_pooling() -> None:
    t, s = rand(3, 4, 4, 4, seed=8), rand(3, 6, 2, 2, seed=9)
    pair = LayerPair("t", "s", (4, 4, 4), (6, 2, 2))
    value = get_method("nst")(context([pair]), weight=50.0)(step({"s": s}, {"t": t}))["nst/s"]
    tp = t.numpy().reshape(3, 4, 2, 2, 2, 2).mean(axis=(3, 5))  # 2×2 average pooling
    sn = s.numpy()
    mmds = []
    for b in range(3):
        ft = [unit(tp[b, c].ravel()) for c in range(4)]
        fs = [unit(sn[b, c].ravel()) for c in range(6)]

        def k(x: np.ndarray, y: np.ndarray) -> float:
            return float(x @ y) ** 2

        mmds.append(np.mean([k(x, y) for x in ft for y in ft])
                    + np.mean([k(x, y) for x in fs for y in fs])
                    - 2 * np.mean([k(x, y) for x in ft for y in fs]))
    # RepDistiller's NSTLoss: weight · MMD², no ½
    assert value.item() == pytest.approx(50.0 * np.mean(mmds), rel=1e-9)


def test_nst_refuses_flat_layers() -> None:
    with pytest.raises(ConfigError, match=r"'nst'.*pair two convolutional"):
        get_method("nst")(context([LayerPair("fc", "fc", (10,), (10,))]))


def test_cka_method_matches_the_feature_space_formula() -> None:
    t, s = rand(7, 3, 2, 2, seed=10), rand(7, 5, 1, 1, seed=11)
    pair = LayerPair("t", "s", (3, 2, 2), (5, 1, 1))
    value = get_method("cka")(context([pair]), weight=2.0)(step({"s": s}, {"t": t}))["cka/s"]
    x, y = t.numpy().reshape(7, -1), s.numpy().reshape(7, -1)
    x, y = x - x.mean(0), y - y.mean(0)
    cka = (np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))
    assert value.item() == pytest.approx(2.0 * (1 - cka), rel=1e-9)
    assert linear_cka(t, t).item() == pytest.approx(1.0)


# --------------------------------------------------------------------------- DELTA


def delta_setup(attention: str):
    student = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Linear(4, 2)).double()
    head = frozenset({"1.weight", "1.bias"})
    pair = LayerPair("stage", "stage", (3, 2, 2), (3, 2, 2), weight=0.5)
    ctx = context([pair], student=student, head=head, start_weights={}, scenario="transfer")
    method = get_method("delta")(ctx, alpha=0.2, beta=0.1, attention=attention).double()
    return method, student


@pytest.mark.parametrize("attention", ["energy", "uniform"])
def test_delta_matches_explicit_loops(attention: str) -> None:
    method, student = delta_setup(attention)
    start = rand(4, 3, 2, 2, seed=12) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    now = rand(4, 3, 2, 2, seed=13)
    terms = method(step({"stage": now}, {"stage": start}))
    st, nw = start.numpy(), now.numpy()
    if attention == "energy":
        score = np.array([np.mean(st[:, c] ** 2) for c in range(3)])
        z = (score - score.mean()) / score.std()
        w = np.exp(z / 5) / np.exp(z / 5).sum()
    else:
        w = np.full(3, 1 / 3)
    feature = sum(3 * w[c] * np.mean([np.sum((nw[b, c] - st[b, c]) ** 2) / 4 for b in range(4)])
                  for c in range(3))
    head = sum(float((p.detach() ** 2).sum()) for n, p in student.named_parameters()
               if n.startswith("1."))
    assert terms["delta/stage"].item() == pytest.approx(0.2 / 2 * 0.5 * feature, rel=1e-9)
    assert terms["delta/head"].item() == pytest.approx(0.1 / 2 * head, rel=1e-9)
    np.testing.assert_allclose(method.channel_weights(method.pairs[0]).numpy(), w, rtol=1e-6)


def test_delta_fixes_its_channel_weights_on_the_first_batch() -> None:
    method, _ = delta_setup("energy")
    first = rand(4, 3, 2, 2, seed=14) * torch.tensor([3.0, 1.0, 1.0]).view(1, 3, 1, 1)
    method(step({"stage": first}, {"stage": first}))
    weights = method.channel_weights(method.pairs[0]).clone()
    assert weights.argmax() == 0 and weights.sum().item() == pytest.approx(1.0)
    later = rand(4, 3, 2, 2, seed=15) * torch.tensor([1.0, 1.0, 5.0]).view(1, 3, 1, 1)
    method(step({"stage": later}, {"stage": later}))
    torch.testing.assert_close(method.channel_weights(method.pairs[0]), weights)


def test_delta_is_refused_outside_transfer() -> None:
    cls = get_method("delta")
    for scenario, labels in (("cross", False), ("distill", True)):
        with pytest.raises(ConfigError, match="'delta'.*same architecture"):
            check_applicable(cls, scenario, same_architecture=False, same_labels=labels)
    check_applicable(cls, "transfer", same_architecture=True, same_labels=False)
    with pytest.raises(ConfigError, match="'delta'.*shapes differ"):
        get_method("delta")(context([LayerPair("a", "a", (3, 2, 2), (4, 2, 2))]))


@pytest.mark.parametrize("name", [n for n in ZOO if n != "delta"])
def test_the_others_apply_to_any_pairing(name: str) -> None:
    cls = get_method(name)
    for scenario in ("cross", "distill", "transfer"):
        check_applicable(cls, scenario, same_architecture=scenario == "transfer",
                         same_labels=scenario == "distill")


# --------------------------------------------------------------------------- CRD


def test_nce_loss_matches_the_crd_formula() -> None:
    anchor = torch.nn.functional.normalize(rand(4, 3, seed=16), dim=1)
    positive = torch.nn.functional.normalize(rand(4, 3, seed=17), dim=1)
    negatives = torch.nn.functional.normalize(rand(6, 3, seed=18), dim=1)
    valid = rand(4, 6, seed=19) > 0
    valid[0] = False  # an anchor without negatives contributes log D1 = 0
    tau, z = 0.2, 1.7
    value = nce_loss(anchor, positive, negatives, valid, tau, math.log(z)).item()
    a, p, n, v = anchor.numpy(), positive.numpy(), negatives.numpy(), valid.numpy()
    total = 0.0
    for i in range(4):
        m = v[i].sum()
        e_pos = np.exp(a[i] @ p[i] / tau)
        total += np.log(e_pos / (e_pos + m * z))
        for k in range(6):
            if v[i, k]:
                total += np.log(m * z / (np.exp(a[i] @ n[k] / tau) + m * z))
    assert value == pytest.approx(-total / 4, rel=1e-9)


def crd_setup(queue_size: int = 8):
    pair = LayerPair("t", "s", (5, 2, 2), (3, 2, 2))
    return get_method("crd")(context([pair]), feat_dim=4, queue_size=queue_size).double()


def test_crd_first_step_uses_other_class_examples_and_estimates_z() -> None:
    method = crd_setup()
    t, s = rand(6, 5, 2, 2, seed=20), rand(6, 3, 2, 2, seed=21)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    terms = method(step({"s": s}, {"t": t}, labels))
    w_s, b_s = (p.detach().numpy() for p in method.embed_student.parameters())
    w_t, b_t = (p.detach().numpy() for p in method.embed_teacher.parameters())
    es = np.stack([unit(x) for x in pooled_np(s) @ w_s.T + b_s])
    et = np.stack([unit(x) for x in pooled_np(t) @ w_t.T + b_t])
    lab = labels.numpy()

    def direction(anchor: np.ndarray, other: np.ndarray) -> float:
        scores = [np.exp(anchor[i] @ other[i] / 0.07) for i in range(6)]
        scores += [np.exp(anchor[i] @ other[k] / 0.07) for i in range(6) for k in range(6)
                   if lab[i] != lab[k]]
        z = np.mean(scores)
        total = 0.0
        for i in range(6):
            negs = [k for k in range(6) if lab[k] != lab[i]]
            e_pos, m = np.exp(anchor[i] @ other[i] / 0.07), len(negs)
            total += np.log(e_pos / (e_pos + m * z))
            total += sum(np.log(m * z / (np.exp(anchor[i] @ other[k] / 0.07) + m * z))
                         for k in negs)
        return -total / 6

    assert terms["crd/student"].item() == pytest.approx(0.8 * direction(es, et), rel=1e-8)
    assert terms["crd/teacher"].item() == pytest.approx(0.8 * direction(et, es), rel=1e-8)
    np.testing.assert_allclose(method.queue_student[:6].numpy(), es, rtol=1e-9)
    assert method.queue_labels[:6].tolist() == lab.tolist() and int(method.queue_filled) == 6


def test_crd_queue_is_fifo_and_untouched_in_eval() -> None:
    method = crd_setup(queue_size=8)
    batches = [(rand(6, 5, 2, 2, seed=s), rand(6, 3, 2, 2, seed=s + 1)) for s in (22, 24, 26)]
    labels = torch.arange(6) % 3
    embeddings = []
    for t, s in batches[:2]:
        method(step({"s": s}, {"t": t}, labels))
        embeddings.append(method.embed(step({"s": s}, {"t": t}))[0].detach())
    # slots 0-5 then 6, 7, 0, 1, 2, 3: batch 1 keeps rows 4, 5 in slots 4, 5
    torch.testing.assert_close(method.queue_student[4:6], embeddings[0][4:])
    torch.testing.assert_close(method.queue_student[6:8], embeddings[1][:2])
    torch.testing.assert_close(method.queue_student[0:4], embeddings[1][2:])
    assert int(method.queue_filled) == 8 and int(method.queue_next) == 4
    before = method.queue_student.clone()
    method.eval()
    method(step({"s": batches[2][1]}, {"t": batches[2][0]}, labels))
    torch.testing.assert_close(method.queue_student, before)
    names = {n for n, _ in method.named_parameters()}
    assert names == {"embed_student.weight", "embed_student.bias", "embed_teacher.weight",
                     "embed_teacher.bias"}  # the queues are buffers, not parameters


# --------------------------------------------------------------------------- OT variants


def dual_entropic_ot(x: np.ndarray, y: np.ndarray, eps: float) -> float:
    """OT_ε with KL(P || a⊗b) from its dual, <f, a> + <g, b>, by log-domain iterations
    (for x = y the symmetric averaged update of Feydy et al., which converges fast)."""
    c = cdist(x, y, "sqeuclidean") / x.shape[1]
    la, lb = -np.log(len(x)) * np.ones(len(x)), -np.log(len(y)) * np.ones(len(y))
    f, g = np.zeros(len(x)), np.zeros(len(y))
    for _ in range(20_000):
        if x is y:
            f_new = 0.5 * (f - eps * logsumexp(la[None, :] + (f[None, :] - c) / eps, axis=1))
            g_new = f_new
        else:
            f_new = -eps * logsumexp(lb[None, :] + (g[None, :] - c) / eps, axis=1)
            g_new = -eps * logsumexp(la[:, None] + (f_new[:, None] - c) / eps, axis=0)
        done = max(np.abs(f_new - f).max(), np.abs(g_new - g).max()) < 1e-13
        f, g = f_new, g_new
        if done:
            break
    return float(np.exp(la) @ f + np.exp(lb) @ g)


def neurons(x: torch.Tensor) -> np.ndarray:
    return np.moveaxis(x.numpy(), 1, 0).reshape(x.shape[1], -1)


def test_sinkhorn_divergence_matches_dual_values() -> None:
    t, s = rand(5, 9, 2, 2, seed=30), rand(5, 6, 2, 2, seed=31)
    tn, sn = neurons(t), neurons(s)
    eps = 0.1 * (cdist(tn, sn, "sqeuclidean") / tn.shape[1]).mean()
    expected = (dual_entropic_ot(tn, sn, eps) - 0.5 * dual_entropic_ot(tn, tn, eps)
                - 0.5 * dual_entropic_ot(sn, sn, eps))
    value = sinkhorn_divergence_features(t, s, epsilon=0.1)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_sinkhorn_divergence_properties() -> None:
    t = rand(5, 12, 2, 2, seed=32)
    assert sinkhorn_divergence_features(t, t).item() == pytest.approx(0, abs=1e-12)
    permuted = t[:, torch.randperm(12, generator=torch.Generator().manual_seed(0))]
    assert sinkhorn_divergence_features(t, permuted).item() == pytest.approx(0, abs=1e-9)
    for seed in range(6):
        s = rand(5, 7, 2, 2, seed=40 + seed) * 0.5 + 0.3
        for eps in (1e-2, 1e-1, 1.0, 10.0):
            assert sinkhorn_divergence_features(t, s, epsilon=eps).item() >= -1e-9
    s = rand(5, 7, 2, 2, seed=33)
    exact = ot_distance(t, s, solver="exact").item()
    gaps = [exact - sinkhorn_divergence_features(t, s, epsilon=eps).item()
            for eps in (1e-1, 1e-2, 1e-3)]
    # Stated tolerance: within 0.1 % of exact OT at ε = 1e-3 (measured 0.075 %), the gap
    # shrinking roughly linearly with ε.
    assert abs(gaps[2]) < 1e-3 * exact
    assert abs(gaps[0]) > abs(gaps[1]) > abs(gaps[2])


def test_sliced_matches_one_dimensional_exact_ot() -> None:
    t, s = rand(9, 24, seed=34), rand(9, 10, seed=35)  # 24 and 10 neurons of dimension 9
    directions = random_directions(9, 5, seed=3, dtype=torch.float64)
    value = sliced_w2(t.t(), s.t(), directions).item()
    expected = []
    for k in range(5):
        x, y = t.t().numpy() @ directions[:, k].numpy(), s.t().numpy() @ directions[:, k].numpy()
        cost = (x[:, None] - y[None, :]) ** 2
        expected.append(ot.emd2(np.full(24, 1 / 24), np.full(10, 1 / 10), cost))
    assert value == pytest.approx(np.mean(expected), rel=1e-10)
    x, y = rand(3, 1, seed=1), rand(4, 1, seed=2)  # sizes 3 and 4: breakpoints 1/3, 1/4...
    plan_cost = ot.emd2(np.full(3, 1 / 3), np.full(4, 1 / 4), cdist(x.numpy(), y.numpy(),
                                                                       "sqeuclidean"))
    assert quantile_w2(x, y).item() == pytest.approx(plan_cost, rel=1e-12)


def test_sliced_is_zero_for_permuted_neurons_and_bounded_by_exact_ot() -> None:
    t = rand(4, 16, 2, 2, seed=36)
    pair = LayerPair("t", "s", (16, 2, 2), (16, 2, 2))
    method = get_method("ot-sliced")(context([pair]))
    permuted = t[:, torch.randperm(16, generator=torch.Generator().manual_seed(1))]
    assert method(step({"s": permuted}, {"t": t}))["ot-sliced/s"].item() == pytest.approx(
        0, abs=1e-12)
    s = rand(4, 11, 2, 2, seed=37)
    d = 16
    basis = torch.linalg.qr(rand(d, d, seed=38)).Q  # a full orthonormal basis: E θθᵀ = I/d
    bound = ot_distance(t, s, solver="exact").item()
    sliced = sliced_w2(torch.from_numpy(neurons(t)), torch.from_numpy(neurons(s)), basis)
    assert 0 < sliced.item() <= bound + 1e-12


def test_sliced_directions_are_seeded_per_step() -> None:
    pair = LayerPair("t", "s", (6, 2, 2), (4, 2, 2))
    t, s = rand(3, 6, 2, 2, seed=39), rand(3, 4, 2, 2, seed=40)
    first, second = (get_method("ot-sliced")(context([pair]), seed=7) for _ in range(2))
    values = [first(step({"s": s}, {"t": t}))["ot-sliced/s"].item() for _ in range(2)]
    assert second(step({"s": s}, {"t": t}))["ot-sliced/s"].item() == values[0]  # reproducible
    assert values[0] != values[1]  # fresh directions at the next step
    second.eval()
    evals = {second(step({"s": s}, {"t": t}))["ot-sliced/s"].item() for _ in range(2)}
    assert evals == {values[1]}  # eval mode does not advance the step


def reference_uot(c: np.ndarray, rho: float, eps: float) -> float:
    """Generalized (Chizat et al.) Sinkhorn in the log domain, run to convergence."""
    n, m = c.shape
    la, lb = np.full(n, -np.log(n)), np.full(m, -np.log(m))
    log_k = la[:, None] + lb[None, :] - c / eps
    lam = rho / (rho + eps)
    f, g = np.zeros(n), np.zeros(m)
    for _ in range(200_000):
        f_new = lam * (la - logsumexp(log_k + g[None, :], axis=1))
        g_new = lam * (lb - logsumexp(log_k + f_new[:, None], axis=0))
        done = max(np.abs(f_new - f).max(), np.abs(g_new - g).max()) < 1e-13
        f, g = f_new, g_new
        if done:
            break
    plan = np.exp(log_k + f[:, None] + g[None, :])

    def kl(p: np.ndarray, q: np.ndarray) -> float:
        return float(np.sum(p * np.log(p / q) - p + q))

    return float((plan * c).sum() + rho * (kl(plan.sum(1), np.exp(la))
                                           + kl(plan.sum(0), np.exp(lb))))


@pytest.mark.parametrize("rho", [0.1, 1.0, 10.0])
def test_unbalanced_matches_generalized_sinkhorn(rho: float) -> None:
    cost = torch.from_numpy(cdist(neurons(rand(4, 9, 2, 2, seed=41)),
                                  neurons(rand(4, 7, 2, 2, seed=42)), "sqeuclidean") / 16)
    mean = float(cost.mean())
    expected = reference_uot(cost.numpy(), rho * mean, 0.1 * mean)
    assert unbalanced_cost(cost, rho=rho, epsilon=0.1).item() == pytest.approx(expected,
                                                                                rel=1e-7)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # POT's own, on its failing run
def test_unbalanced_survives_a_far_neuron_that_breaks_pot() -> None:
    cost = rand(20, 15, seed=43).abs()
    cost[0] += 500.0  # one teacher neuron far from every student neuron
    mean = float(cost.mean())
    a, b = np.full(20, 1 / 20), np.full(15, 1 / 15)
    with pytest.warns(UserWarning, match="Numerical errors"):  # POT alone fails here
        ot.unbalanced.sinkhorn_unbalanced(a, b, cost.numpy(), 0.01 * mean, mean,
                                          method="sinkhorn_translation_invariant")
    with warnings.catch_warnings():
        warnings.simplefilter("error", OTSolverWarning)
        value = unbalanced_cost(cost, rho=1.0, epsilon=0.01)
    assert value.item() == pytest.approx(reference_uot(cost.numpy(), mean, 0.01 * mean),
                                         rel=1e-6)


def test_unbalanced_becomes_balanced_as_rho_grows() -> None:
    t, s = rand(5, 10, 2, 2, seed=44), rand(5, 8, 2, 2, seed=45)
    pair = LayerPair("t", "s", (10, 2, 2), (8, 2, 2))
    balanced = ot_distance(t, s, solver="sinkhorn", epsilon=1e-2).item()
    values = {}
    for rho in (0.1, 1.0, 1e4):
        method = get_method("ot-unbalanced")(context([pair]), rho=rho, weight=1.0)
        values[rho] = method(step({"s": s}, {"t": t}))["ot-unbalanced/s"].item()
    # Stated tolerance: 0.1 % of the balanced entropic cost at ρ = 1e4 mean costs (measured
    # 0.002 %; 0.24 % at ρ = 100, 20 % at ρ = 1).
    assert values[1e4] == pytest.approx(balanced, rel=1e-3)
    assert values[0.1] < values[1.0] < values[1e4]  # cheaper when mass may be dropped


@pytest.mark.parametrize("name", ["ot-sinkhorn-div", "ot-sliced", "ot-unbalanced"])
def test_ot_variants_refuse_mismatched_layers(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{name}'.*'fc'.*pair two"):
        get_method(name)(context([LayerPair("layer3", "fc", (8, 2, 2), (10,))]))
    with pytest.raises(ConfigError, match=rf"'{name}': spatial sizes differ"):
        get_method(name)(context([LayerPair("a", "b", (8, 4, 4), (8, 2, 2))]), spatial="error")


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ZOO)
def test_gradients_reach_the_student_and_never_the_teacher(name: str) -> None:
    if name == "delta":
        student = nn.Linear(3, 2)
        pairs = [LayerPair("a", "a", (4, 4, 4), (4, 4, 4)), LayerPair("b", "b", (6, 2, 2),
                                                                      (6, 2, 2))]
        ctx = context(pairs, student=student, head=frozenset({"weight", "bias"}))
        shapes = {"a": ((4, 4, 4), (4, 4, 4)), "b": ((6, 2, 2), (6, 2, 2))}
    else:
        pairs = [LayerPair("ta", "a", (5, 4, 4), (3, 4, 4)), LayerPair("tb", "b", (8, 2, 2),
                                                                       (6, 2, 2))]
        ctx = context(pairs)
        shapes = {"a": ((5, 4, 4), (3, 4, 4)), "b": ((8, 2, 2), (6, 2, 2))}
    method = get_method(name)(ctx)
    teacher = {p.teacher: rand(8, *shapes[p.student][0], seed=50 + i, dtype=torch.float32)
               .requires_grad_() for i, p in enumerate(pairs)}
    student = {p.student: rand(8, *shapes[p.student][1], seed=60 + i, dtype=torch.float32)
               .requires_grad_() for i, p in enumerate(pairs)}
    terms = method(step(student, teacher, torch.arange(8) % 4))
    assert terms and all(k.startswith(name + "/") for k in terms)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    sum(terms.values()).backward()
    assert all(x.grad is None for x in teacher.values())
    deepest = student[pairs[-1].student]
    assert deepest.grad is not None and deepest.grad.abs().sum() > 0
    for param in method.parameters():  # CRD's heads: trained by the method's own loss
        assert param.grad is not None and param.grad.abs().sum() > 0
    if name == "delta":
        assert ctx.student.weight.grad is not None  # the head's L2 term
