"""Representation diagnostics in ``otbench report`` (issue #9): a tiny MLflow store with KNOWN
``diag/*`` histories and a ``diagnostics.npz`` artifact; every figure is checked for its
series before saving and for pixels after, and the paragraph's numbers against scipy."""

from __future__ import annotations

import itertools
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from scipy import stats

from otbench.benchmark.tracking import mlflow_run
from otbench.reports import ReportOptions, write_report
from otbench.reports.collect import load_plans, metric_histories, open_client, read_runs
from otbench.reports.figures.diagnostics import (
    accuracy_vs_distance,
    diagnostic_curves,
    plan_heatmaps,
    plan_order,
    recorded_marker,
)
from otbench.reports.representation import (
    curve_data,
    distance_correlations,
    final_distances,
    history_keys,
    logged_layers,
    summary_sentences,
)
from otbench.reports.tables import Column, final_results, summarize

EXPERIMENT = "diag-suite"
PLAIN = "no-diagnostics"
TASK_A, TASK_B = "digits:5-9@10", "digits:0-9"
#: features.10 is the deepest: by the logged layer pairs, not by name (alphabetically first).
LAYERS = ("features.3", "features.10")
PAIRS = "[[features.3, features.3], [features.10, features.10]]"
EPOCHS = 3
#: Per (scenario, task, method): (test accuracy, final OT distance at the deepest layer) per
#: seed. Column A: n = 6, ρ computable; column B: n = 2, too few runs for a correlation.
RUNS = {
    ("transfer", TASK_A, "ot"): [(0.84, 0.20), (0.86, 0.10), (0.83, 0.30)],
    ("transfer", TASK_A, "finetune"): [(0.80, 0.50), (0.78, 0.45), (0.81, 0.25)],
    ("distill", TASK_B, "ot"): [(0.70, 0.40)],
    ("distill", TASK_B, "finetune"): [(0.65, 0.60)],
}
SHAPES = {"features.3": (4, 3), "features.10": (5, 6)}


def ot_history(final: float, layer: str) -> list[float]:
    """Distance per step 0..EPOCHS ending at ``final`` (the shallow layer at twice it)."""
    end = final if layer == LAYERS[-1] else 2 * final
    return [end + 0.1 * (EPOCHS - step) for step in range(EPOCHS + 1)]


def known_plans() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {"epochs": np.arange(EPOCHS + 1)}
    for layer, (teachers, students) in SHAPES.items():
        for which in ("plan_first", "plan_last"):
            plan = rng.random((teachers, students))
            arrays[f"{which}/{layer}"] = plan / plan.sum()
        arrays[f"matching/{layer}"] = rng.integers(0, teachers, (EPOCHS + 1, students))
    return arrays


def log_run(uri: str, artifacts: Path, experiment: str, scenario: str, task: str, method: str,
            seed: int, test: float, final: float, diagnostics: bool, npz: Path | None) -> None:
    tags = {"stage": "final", "scenario": scenario, "scenario_id": scenario, "task": task,
            "method": method, "seed": seed}
    with mlflow_run(uri, experiment, run_name=f"{method} {task} {seed}", tags=tags,
                    artifact_root=artifacts) as run:
        run.log_params({"layer_pairs": PAIRS, "seed": seed})
        for step in range(EPOCHS + 1):
            metrics = {"val/acc": test - 0.01 * (EPOCHS - step)} if step else {}
            if diagnostics:
                for layer in LAYERS:
                    distance = ot_history(final, layer)[step]
                    metrics[f"diag/ot/{layer}"] = distance
                    metrics[f"diag/cka/{layer}"] = 1 - distance
                    if step:
                        metrics[f"diag/stability/{layer}"] = 0.5 / step
            run.log_metrics(metrics, step=step)
        run.log_metrics({"val/acc_final": test, "test/acc": test}, step=EPOCHS)
        if npz is not None:
            run.log_file(npz)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() else tmp_path_factory.mktemp("diag")
    with tempfile.TemporaryDirectory(dir=base, prefix="otbench-diag-") as name:
        folder = Path(name)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        npz = folder / "diagnostics.npz"
        np.savez_compressed(npz, **known_plans())
        for (scenario, task, method), values in RUNS.items():
            for seed, (test, final) in enumerate(values):
                # Both columns' first OT runs have plans: B's, trained from scratch, is drawn.
                artifact = npz if (method, seed) == ("ot", 0) else None
                log_run(uri, folder / "artifacts", EXPERIMENT, scenario, task, method, seed,
                        test, final, True, artifact)
        log_run(uri, folder / "artifacts", PLAIN, "transfer", TASK_A, "ot", 0, 0.8, 0.1,
                False, None)
        yield uri, folder


@pytest.fixture(scope="module")
def report(store: tuple[str, Path]) -> Path:
    uri, folder = store
    return write_report(uri, EXPERIMENT, folder / "report", storage="sqlite:///:memory:")


@pytest.fixture(scope="module")
def setup(store: tuple[str, Path]):
    uri, _ = store
    options = ReportOptions()
    final = final_results(read_runs(uri, EXPERIMENT, timings=False), options)
    return uri, final, summarize(final, options)


def column_a() -> Column:
    return Column("transfer", "transfer", TASK_A)


def test_layers_ordered_by_logged_pairs(setup) -> None:
    _, final, _ = setup
    assert logged_layers(final) == list(LAYERS)


def test_final_distance_is_last_ot_of_deepest_layer(setup) -> None:
    _, final, _ = setup
    points = final_distances(final)
    assert set(points.layer) == {LAYERS[-1]}
    expected = {(t, m, s): d for (_, t, m), values in RUNS.items()
                for s, (_, d) in enumerate(values)}
    got = {(r.task, r.method, r.seed): r.distance for r in points.itertuples()}
    assert got == pytest.approx(expected)


def test_each_run_gets_its_own_deepest_logged_layer() -> None:
    """Runs of two architectures (their own layer orders), one run missing its deepest
    value, one without diagnostics."""
    nan = float("nan")
    final = pd.DataFrame({
        "run_id": ["a", "b", "c", "d"], "scenario": "s", "entry": "s", "task": "t",
        "method": ["ot", "kd", "ot", "kd"], "seed": [0, 0, 1, 1],
        "config.layer_pairs": [PAIRS, PAIRS, "[[l4, layer4]]", PAIRS],
        "diag/ot/features.3": [1.0, 3.0, nan, nan], "diag/ot/features.10": [2.0, nan, nan, nan],
        "diag/ot/layer4": [nan, nan, 5.0, nan],
        "diag/cka/features.3": [0.1, 0.3, nan, nan], "diag/cka/features.10": [0.2, nan, nan, nan],
        "diag/cka/layer4": [nan, nan, 0.5, nan], "test/acc": [0.9, 0.8, 0.7, 0.6]})
    points = final_distances(final).set_index("run_id")
    assert list(points.index) == ["a", "b", "c"]
    assert list(points.layer) == ["features.10", "features.3", "layer4"]
    assert list(points.distance) == [2.0, 3.0, 5.0]
    assert list(points.cka) == [0.2, 0.3, 0.5]
    assert list(points["test/acc"]) == [0.9, 0.8, 0.7]


def test_paragraph_correlation_equals_scipy(setup) -> None:
    _, final, table = setup
    correlations = distance_correlations(final_distances(final), table).set_index("task")
    values = RUNS[("transfer", TASK_A, "ot")] + RUNS[("transfer", TASK_A, "finetune")]
    expected = stats.spearmanr([d for _, d in values], [t for t, _ in values])
    row = correlations.loc[TASK_A]
    assert row.n == 6
    assert row.rho == pytest.approx(expected.statistic)
    assert row.p_value == pytest.approx(expected.pvalue)
    assert row.closest == "ot" and row.farthest == "finetune"
    assert row.closest_distance == pytest.approx(np.mean([0.20, 0.10, 0.30]))
    assert np.isnan(correlations.loc[TASK_B].rho) and correlations.loc[TASK_B].n == 2
    sentences = summary_sentences(correlations.reset_index(), table)
    assert f"ρ = {expected.statistic:.2f}" in sentences[0]
    assert f"n = 6 runs (p = {expected.pvalue:.3g})" in sentences[0]
    assert "no rank correlation" in sentences[1]


def test_curve_figures_have_one_series_per_method_per_panel(setup) -> None:
    uri, final, table = setup
    histories = metric_histories(open_client(uri), final.run_id, history_keys(LAYERS))
    runs = final[final.task == TASK_A]
    fig = diagnostic_curves(curve_data(runs, histories, table, column_a(), ("ot", "cka"),
                                       list(LAYERS)))
    assert len(fig.axes) == 4
    for ax in fig.axes:
        assert len(ax.get_lines()) == 2
    assert [ax.get_xlabel() for ax in fig.axes] == ["", "", "Epoch", "Epoch"]  # bottom row
    assert fig.axes[0].get_ylabel() and not fig.axes[1].get_ylabel()  # left column
    ot_panel = fig.axes[1]  # first row, deepest layer
    assert ot_panel.get_title() == LAYERS[-1]
    ot_line = next(line for line in ot_panel.get_lines() if line.get_label() == "OT")
    seeds = [ot_history(d, LAYERS[-1]) for _, d in RUNS[("transfer", TASK_A, "ot")]]
    assert list(ot_line.get_xdata()) == list(range(EPOCHS + 1))
    assert ot_line.get_ydata() == pytest.approx(np.mean(seeds, axis=0))
    stability = diagnostic_curves(curve_data(runs, histories, table, column_a(),
                                             ("stability",), list(LAYERS)))
    assert len(stability.axes) == 2
    line = stability.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [1, 2, 3]
    assert line.get_ydata() == pytest.approx([0.5, 0.25, 0.5 / 3])
    assert line.get_marker() in (None, "None")  # every epoch recorded: a plain line
    ends = histories[histories.step.isin([0, EPOCHS])]  # as under diagnostics_every >= EPOCHS
    sparse = diagnostic_curves(curve_data(runs, ends, table, column_a(), ("ot", "stability"),
                                          list(LAYERS)))
    for ax in sparse.axes:
        assert all(line.get_marker() == "o" for line in ax.get_lines())
    lone = sparse.axes[len(LAYERS)].get_lines()[0]  # stability: one value, at the last epoch
    assert list(lone.get_xdata()) == [EPOCHS]


@pytest.mark.parametrize(("epochs", "marked"), [([0, 1, 2, 3], False), ([0, 4, 8, 12], True),
                                                ([0, 12], True), ([12], True)])
def test_sparse_records_are_marked(epochs: list[int], marked: bool) -> None:
    """Skipped epochs (``diagnostics_every``) mark the recorded ones, and a lone record (the
    stability of a run recorded at its first and last epoch only) is a visible point."""
    assert (recorded_marker(np.asarray(epochs)) is not None) == marked


def test_curve_grid_keeps_long_tick_labels_apart(setup) -> None:
    """Constrained layout makes room for tick labels of seven characters: no panel, with its
    labels, overlaps another, the heading or the legend, and all lie inside the figure."""
    uri, final, table = setup
    histories = metric_histories(open_client(uri), final.run_id, history_keys(LAYERS))
    large = histories.key.str.startswith("diag/ot/")
    extreme = histories.assign(value=np.where(large, 12345.6 * histories.value,
                                              1.234e-4 * histories.value))
    fig = diagnostic_curves(curve_data(final, extreme, table, column_a(),
                                       ("ot", "cka", "stability"), list(LAYERS)))
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax.get_tightbbox(renderer) for ax in fig.axes]
    assert fig.get_suptitle() and len(fig.texts) == 1  # the heading
    others = [fig.legends[0].get_window_extent(renderer), fig.texts[0].get_window_extent(renderer)]
    for first, second in itertools.combinations(panels + others, 2):
        assert not first.overlaps(second)
    for box in panels + others:
        assert fig.bbox.containsx(box.x0) and fig.bbox.containsx(box.x1)
        assert fig.bbox.containsy(box.y0) and fig.bbox.containsy(box.y1)


def test_accuracy_vs_distance_one_point_per_run(setup) -> None:
    _, final, table = setup
    fig = accuracy_vs_distance(final_distances(final), table)
    ax = fig.axes[0]
    assert [len(c.get_offsets()) for c in ax.collections] == [4, 4]  # OT, finetune: A + B
    assert ax.get_xlabel().startswith("Final OT distance") and "accuracy" in ax.get_ylabel()


def test_plan_heatmap_orders_students_by_matching(setup) -> None:
    uri, _, _ = setup
    runs = read_runs(uri, EXPERIMENT, timings=False)
    run_id = runs[(runs.task == TASK_B) & (runs.method == "ot") & (runs.seed == 0)].run_id.iloc[0]
    plans, epochs = load_plans(open_client(uri), run_id)
    assert list(plans) == list(LAYERS) and epochs == (0, EPOCHS)
    arrays = known_plans()
    last = arrays[f"plan_last/{LAYERS[0]}"]
    order = plan_order(last)
    assert (np.diff(last.argmax(axis=0)[order]) >= 0).all()
    fig = plan_heatmaps(plans, epochs, "x")
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 4
    shares = last[:, order] / last[:, order].sum(axis=0)  # each student neuron's mass = 1
    assert np.asarray(images[1].get_array()) == pytest.approx(shares)
    assert len({image.get_clim() for image in images}) == 1  # one color scale for all panels


def test_report_writes_figures_paragraph_and_notes(report: Path) -> None:
    folder = report.parent / "figures"
    # One figure of curves per column, one plan heat map: of the column trained from scratch
    # (distill), not of transfer's (listed first), where the student starts as the teacher.
    stems = {"diag_curves_transfer_digits_5-9_at10", "diag_curves_distill_digits_0-9",
             "diag_plan_distill_digits_0-9", "diag_accuracy_vs_distance"}
    names = {p.name for p in folder.iterdir() if p.name.startswith("diag_")}
    assert names == {f"{s}.{ext}" for s in stems for ext in ("png", "pdf")}
    for stem in stems:
        assert (folder / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        assert matplotlib.image.imread(folder / f"{stem}.png")[..., :3].std() > 0.05, stem
    page = report.read_text(encoding="utf-8")
    assert "<h2>Representation diagnostics</h2>" in page
    assert re.search(r"Spearman ρ = -?\d\.\d\d", page)
    assert "Distillation · Digits 0–9: transport plan" in page
    assert f"transport plan at layer {LAYERS[-1]} of the OT run" in page  # the deepest
    points = pd.read_csv(report.parent / "diagnostics.csv")
    assert len(points) == sum(len(v) for v in RUNS.values())


def test_no_diagnostics_is_a_note(store: tuple[str, Path]) -> None:
    uri, folder = store
    page = write_report(uri, PLAIN, folder / "plain", storage="sqlite:///:memory:")
    assert not list((page.parent / "figures").glob("diag_*"))
    assert "No representation diagnostics" in page.read_text(encoding="utf-8")
    assert "Representation diagnostics</h2>" not in page.read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _no_pyplot_leak() -> Iterator[None]:
    import matplotlib.pyplot as plt

    yield
    assert plt.get_fignums() == []
