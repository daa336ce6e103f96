"""Issue #6: the fast OT paths against POT's emd2, plan reuse, and ``otbench perf``."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import ot
import pytest
import torch
from scipy.spatial.distance import cdist

from otbench.benchmark.cli import main
from otbench.benchmark.config import RunConfig
from otbench.benchmark.diagnostics import DiagnosticsRecorder
from otbench.benchmarks import perf
from otbench.errors import ConfigError
from otbench.methods import LayerPair, StepOutputs, TransferContext, get_method, ot_distance
from otbench.methods import ot as ot_module
from otbench.methods.ot import OTSettings, neuron_costs, solver_cost


def neurons(n: int, d: int, seed: int, relu: bool = False) -> torch.Tensor:
    """``(d, n)`` features; ``relu`` adds the ties and uneven norms of post-ReLU layers."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(d, n, generator=g, dtype=torch.float64)
    if relu:
        x = (x + torch.randn(1, n, generator=g, dtype=torch.float64)).clamp_min(0)
        x = x * torch.rand(1, n, generator=g, dtype=torch.float64) * 5
    return x


def emd2(teacher: torch.Tensor, student: torch.Tensor) -> float:
    t, s = teacher.t().numpy(), student.t().numpy()
    cost = cdist(t, s, "sqeuclidean") / t.shape[1]
    return float(ot.emd2(np.full(len(t), 1 / len(t)), np.full(len(s), 1 / len(s)), cost,
                         numItermax=100_000_000))


@pytest.mark.parametrize(("dtype", "rel"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(("n_t", "n_s", "solvers"), [
    (64, 64, ("auto", "exact", "assignment")),
    (200, 200, ("auto", "exact", "assignment")),
    (96, 40, ("auto", "exact")),
    (33, 150, ("auto", "exact")),
])
def test_fast_paths_equal_pot_emd2(n_t: int, n_s: int, solvers: tuple[str, ...], relu: bool,
                                   dtype: torch.dtype, rel: float) -> None:
    for seed in range(3):
        teacher, student = neurons(n_t, 48, 2 * seed, relu), neurons(n_s, 48, 2 * seed + 1, relu)
        expected = emd2(teacher, student)
        for solver in solvers:
            value = ot_distance(teacher.to(dtype), student.to(dtype), solver=solver)
            assert value.item() == pytest.approx(expected, rel=rel), (solver, seed)


@pytest.mark.parametrize("threads", [1, 2])
def test_plans_of_a_step_solved_side_by_side_equal_pot_emd2(threads: int) -> None:
    """One step's layer pairs (equal and unequal widths) solved on threads, as OT does."""
    shapes = {"a": (64, 64), "b": (96, 40), "c": (128, 128), "d": (30, 70)}
    pairs = {key: (neurons(n_t, 32, 2 * i), neurons(n_s, 32, 2 * i + 1))
             for i, (key, (n_t, n_s)) in enumerate(shapes.items())}
    settings = OTSettings()
    costs = {key: neuron_costs(t, s, settings) for key, (t, s) in pairs.items()}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        plans = ot_module.solved_plans(
            {key: ot_module.neuron_pair(t, s, settings) for key, (t, s) in pairs.items()},
            settings)
    finally:
        torch.set_num_threads(previous)
    assert list(plans) == list(costs)
    for key, (teacher, student) in pairs.items():
        value = (plans[key] * costs[key]).sum().item()
        assert value == pytest.approx(emd2(teacher, student), rel=1e-10), key
        n_t, n_s = shapes[key]
        torch.testing.assert_close(plans[key].sum(1), torch.full((n_t,), 1 / n_t,
                                                                  dtype=torch.float64))
        torch.testing.assert_close(plans[key].sum(0), torch.full((n_s,), 1 / n_s,
                                                                  dtype=torch.float64))


def test_support_cost_matches_the_dense_cost_and_its_gradients_are_reproducible() -> None:
    """The plan's-support loss against ``(P * C).sum()`` by autograd, and bitwise the same
    gradient every time on two threads (autograd's own gather backward is not)."""
    teacher, student = neurons(48, 2048, 0).t().contiguous(), neurons(16, 2048, 1).t().contiguous()
    plan = ot_module.solved_plans({"x": (teacher, student)}, OTSettings())["x"]
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = set()
        for _ in range(10):
            t, s = teacher.clone().requires_grad_(), student.clone().requires_grad_()
            value = ot_module.plan_cost(plan, t, s)
            value.backward()
            grads.add((t.grad.numpy().tobytes(), s.grad.numpy().tobytes()))
    finally:
        torch.set_num_threads(previous)
    assert len(grads) == 1
    t_dense, s_dense = teacher.clone().requires_grad_(), student.clone().requires_grad_()
    dense = (plan * ot_module.cost_matrix(t_dense, s_dense)).sum()
    dense.backward()
    assert value.item() == pytest.approx(dense.item(), rel=1e-10)
    torch.testing.assert_close(t.grad, t_dense.grad)
    torch.testing.assert_close(s.grad, s_dense.grad)


def test_solver_cost_keeps_the_optimal_plans_and_is_nonnegative() -> None:
    cost = cdist(np.random.default_rng(0).normal(size=(30, 5)),
                 np.random.default_rng(1).normal(size=(20, 5)), "sqeuclidean")
    reduced = solver_cost(cost)
    assert reduced.min() == 0.0
    a, b = np.full(30, 1 / 30), np.full(20, 1 / 20)
    plan = ot.emd(a, b, reduced, numItermax=10_000_000)
    assert (plan * cost).sum() == pytest.approx(ot.emd2(a, b, cost), rel=1e-12)


PAIRS = [LayerPair("t1", "s1", (12, 3, 3), (12, 3, 3)), LayerPair("t2", "s2", (20,), (16,))]


def ot_method(**params: object) -> torch.nn.Module:
    return get_method("ot")(TransferContext(torch.nn.Identity(), torch.nn.Identity(), PAIRS),
                            **params)


def step_outputs(seed: int) -> StepOutputs:
    g = torch.Generator().manual_seed(seed)
    teacher = {"t1": torch.randn(6, 12, 3, 3, generator=g), "t2": torch.randn(6, 20, generator=g)}
    student = {"s1": torch.randn(6, 12, 3, 3, generator=g).requires_grad_(),
               "s2": torch.randn(6, 16, generator=g).requires_grad_()}
    return StepOutputs(torch.zeros(6, 2), torch.zeros(6), student_features=student,
                       teacher_features=teacher)


@pytest.mark.parametrize("explicit", [{}, {"plan_lag": 0}])
def test_plan_every_1_equals_no_reuse_in_loss_and_gradient(explicit: dict[str, int]) -> None:
    """Training mode with plan_every=1 (and plan_lag=0, the default) against eval mode, which
    never reuses a plan, and against ot_distance, bit for bit."""
    reused, fresh = ot_method(plan_every=1, **explicit), ot_method(plan_every=1).eval()
    for seed in range(5):
        step, fresh_step, direct = step_outputs(seed), step_outputs(seed), step_outputs(seed)
        terms, fresh_terms = reused(step), fresh(fresh_step)
        sum(terms.values()).backward()
        sum(fresh_terms.values()).backward()
        for pair in PAIRS:
            key = f"ot/{pair.key}"
            assert torch.equal(terms[key], fresh_terms[key])
            assert torch.equal(step.student_features[pair.student].grad,
                               fresh_step.student_features[pair.student].grad)
            expected = 0.1 * ot_distance(direct.teacher_features[pair.teacher],
                                         direct.student_features[pair.student])
            expected.backward()
            assert torch.equal(terms[key], expected)
            assert torch.equal(step.student_features[pair.student].grad,
                               direct.student_features[pair.student].grad)


class CountingSolver:
    """Stands in for ``transport_plan`` and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.solve = ot_module.transport_plan

    def __call__(self, cost: torch.Tensor, settings: OTSettings) -> torch.Tensor:
        self.calls += 1
        return self.solve(cost, settings)


def test_plan_every_k_solves_once_per_k_steps_and_uses_current_costs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    counter = CountingSolver()
    monkeypatch.setattr(ot_module, "transport_plan", counter)
    method, settings = ot_method(plan_every=3), OTSettings()
    for index in range(7):  # solves at steps 0, 3 and 6
        step = step_outputs(index)
        terms = method(step)
        assert counter.calls == len(PAIRS) * (index // 3 + 1)
        pair = PAIRS[0]
        cost = neuron_costs(step.teacher_features[pair.teacher],
                            step.student_features[pair.student], settings)
        plan = method._plans[pair.key]
        torch.testing.assert_close(terms[f"ot/{pair.key}"], 0.1 * (plan * cost).sum())
    assert counter.calls == 3 * len(PAIRS)


def test_eval_mode_always_solves_and_leaves_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = CountingSolver()
    monkeypatch.setattr(ot_module, "transport_plan", counter)
    method = ot_method(plan_every=10)
    method(step_outputs(0))
    cached = dict(method._plans)
    method.eval()
    for index in range(3):
        method(step_outputs(index + 1))
        assert counter.calls == len(PAIRS) * (index + 2)
    assert all(method._plans[key] is plan for key, plan in cached.items())
    method.train()
    method(step_outputs(9))  # training step 1 of 10: the cached plans
    assert counter.calls == len(PAIRS) * 4


def solved_neurons(step: StepOutputs) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {pair.key: ot_module.neuron_pair(step.teacher_features[pair.teacher],
                                            step.student_features[pair.student].detach(),
                                            OTSettings()) for pair in PAIRS}


@pytest.mark.parametrize("every", [1, 3])
def test_plan_lag_uses_the_plans_solved_from_the_previous_solving_step(every: int) -> None:
    """Step t's loss and gradient are <P, C> with the plan solved from step t − 1's features
    (the last solving step before t with plan_every = k; the first step its own), computed
    here independently on fresh copies of the features."""
    method = ot_method(plan_lag=1, plan_every=every)
    for index in range(8):
        step, direct = step_outputs(index), step_outputs(index)
        source = 0 if index == 0 else (index - 1) // every * every
        plans = ot_module.solved_plans(solved_neurons(step_outputs(source)), OTSettings())
        terms = method(step)
        sum(terms.values()).backward()
        for pair in PAIRS:
            teacher, student = ot_module.neuron_pair(direct.teacher_features[pair.teacher],
                                                     direct.student_features[pair.student],
                                                     OTSettings())
            expected = 0.1 * ot_module.plan_cost(plans[pair.key], teacher, student)
            expected.backward()
            assert torch.equal(terms[f"ot/{pair.key}"], expected), (index, pair.key)
            assert torch.equal(step.student_features[pair.student].grad,
                               direct.student_features[pair.student].grad)


def test_plan_lag_solves_off_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the first step solves in place; later solves run on the pipeline's thread, once
    per plan_every steps, and eval mode still solves in place without touching them."""
    threads: list[str] = []
    solve = ot_module.solved_plans

    def recording(*args: object) -> dict[str, torch.Tensor]:
        threads.append(threading.current_thread().name)
        return solve(*args)

    monkeypatch.setattr(ot_module, "solved_plans", recording)
    method = ot_method(plan_lag=1, plan_every=2)
    for index in range(5):  # solves at steps 0 (in place), 2 and 4 (pipelined)
        method(step_outputs(index))
    assert threads[0] == threading.current_thread().name
    method.eval()
    method(step_outputs(9))
    method._pipeline.collect()  # step 4's solve may still be running
    assert sorted(name.split("_")[0] for name in threads) == \
           ["MainThread", "MainThread", "ot-plans", "ot-plans"]


def test_plan_lag_must_be_0_or_1() -> None:
    with pytest.raises(ConfigError, match="plan_lag"):
        ot_method(plan_lag=2)


def test_plan_every_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="plan_every must be >= 1"):
        ot_method(plan_every=0)


def test_measure_interleaves_variants_in_rotating_order() -> None:
    order: list[str] = []

    def variant(name: str) -> perf.Variant:
        return lambda: order.append(name) or 1.0

    samples = perf.measure({"a": variant("a"), "b": variant("b"), "c": variant("c")},
                           repeats=3, warmup=1)
    assert order == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert samples == {"a": [1.0] * 3, "b": [1.0] * 3, "c": [1.0] * 3}


def test_diagnostics_section_times_one_record_per_sample_on_a_default_size_probe(
        monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: list[tuple[int, int]] = []

    class Counting(DiagnosticsRecorder):
        def record(self, epoch: int) -> dict[str, float]:
            recorded.append((epoch, self.probe.shape[0]))
            return super().record(epoch)

    monkeypatch.setattr(perf, "DiagnosticsRecorder", Counting)
    opts = perf.PerfOptions.build("cpu", 2, quick=True)
    setup = perf.build_pair(perf.PAIRS["cnn"], opts.device)
    before = {k: v.clone() for k, v in setup.student.state_dict().items()}
    (row,) = perf.diagnostics_rows(opts, setup)
    # The other sections' student is left as it was: same weights, statistics and mode.
    after = setup.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and setup.student.training
    probe = RunConfig.model_fields["probe_size"].default
    # One warm-up call, then one record per sample, epochs counting up as in a run.
    assert recorded == [(0, probe), (1, probe), (2, probe)]
    assert row["probe"] == probe and row["diagnostics_ms"] > 0 and row["step_ms"] > 0


def test_quick_perf_run_writes_json_with_ratios_of_medians(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "perf.json"
    start = time.perf_counter()
    # One thread: two OpenMP threads on two cores shared with other jobs run 100x slower.
    assert main(["perf", "--quick", "--threads", "1", "--json", str(out)]) == 0
    assert time.perf_counter() - start < 60
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert {"machine", "settings", "ot_layers", "methods", "plan_reuse", "data_path",
            "diagnostics", "wide_layers"} <= set(result)
    assert {"cpu_count", "torch", "device"} <= set(result["machine"])
    assert result["machine"]["torch"] == torch.__version__

    layers = result["ot_layers"]
    assert {row["solver"] for row in layers} == {perf.REFERENCE, *perf.SOLVERS}
    for row in layers:
        reference = next(r for r in layers if r["width"] == row["width"]
                         and r["solver"] == perf.REFERENCE)
        assert row["ratio_to_reference"] == row["median_ms"] / reference["median_ms"]
        assert f"{row['ratio_to_reference']:.3f}" in printed

    for section in ("methods", "plan_reuse"):
        rows = [r for r in result[section] if "skipped" not in r]
        base = {r["method"]: r["median_ms"] for r in rows if r.get("plan_every") is None}
        for row in rows:
            assert row["ratio_to_finetune"] == row["median_ms"] / base["finetune"]
            assert row["ratio_to_features_only"] == (row["median_ms"]
                                                     / base[perf.FEATURES_ONLY])
            assert f"{row['ratio_to_finetune']:.3f}" in printed
    assert {"ot", "finetune", "fitnets", "at"} <= {r["method"] for r in result["methods"]}
    assert {r["plan_every"] for r in result["plan_reuse"]} >= {1, 4}

    for row in result["data_path"]:
        assert row["ratio"] == row["loop_ms"] / row["bare_ms"]
        assert f"{row['ratio']:.3f}" in printed

    (diagnostics,) = result["diagnostics"]  # --quick: the digits pair only
    assert diagnostics["probe"] == RunConfig.model_fields["probe_size"].default
    assert diagnostics["layers"] == 3
    assert diagnostics["ratio_to_step"] == diagnostics["diagnostics_ms"] / diagnostics["step_ms"]
    assert f"{diagnostics['ratio_to_step']:.3f}" in printed

    wide = result["wide_layers"]  # --quick: ResNet-50's first stage at batch 1
    assert {(r["width"], r["dim"]) for r in wide} == {(256, 56 * 56)}
    for row in wide:
        assert row["setting"] in {perf.POT_USER, *perf.WIDE_SETTINGS}
        anchor = next(r for r in wide if r["width"] == row["width"]
                      and r["setting"] == perf.POT_USER)
        assert row["ratio_to_pot_user"] == row["blocking_ms"] / anchor["blocking_ms"]
        assert f"{row['ratio_to_pot_user']:.3f}" in printed


def test_pot_user_anchor_is_omega_with_pot_gradient() -> None:
    """The anchor computes the same Ω as otbench's exact OT, and its gradient reaches the
    student through POT."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(3, 6, 2, 2, generator=g).relu()
    student = torch.randn(3, 6, 2, 2, generator=g).relu().requires_grad_()
    value = perf._pot_user_step(teacher, student)
    value.backward()
    assert value.item() == pytest.approx(ot_distance(teacher, student).item(), rel=1e-5)
    assert student.grad is not None and student.grad.abs().sum() > 0
