"""Tests of ``otbench report``: an MLflow store (and Optuna storage) with KNOWN numbers is
written in a temporary folder, and every table cell, mark, file and figure is checked against
values computed here independently (numpy, scipy)."""

from __future__ import annotations

import html
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib.colors
import matplotlib.image
import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
from scipy import stats

from otbench.benchmark.cli import main
from otbench.benchmark.tracking import RunStopped, mlflow_run
from otbench.errors import ConfigError
from otbench.reports import (
    NoFinalRunsError,
    ReportError,
    ReportOptions,
    UnknownExperimentError,
    collect,
    write_report,
)
from otbench.reports import report as report_module
from otbench.reports.atomic import replaced_whole
from otbench.reports.collect import (
    cast_value,
    find_experiment,
    metric_histories,
    open_client,
    read_runs,
)
from otbench.reports.figures.accuracy import (
    accuracy_bars,
    accuracy_vs_samples,
    sample_size_families,
    searched_params,
    sensitivity,
    validation_curves,
)
from otbench.reports.figures.studies import history_figure, importance_figure
from otbench.reports.figures.style import (
    FALLBACK_COLORS,
    METHOD_COLORS,
    method_color,
    method_palette,
)
from otbench.reports.report import plan_columns, stem
from otbench.reports.settings import per_cell_settings, run_counts, shared_settings, software
from otbench.reports.studies import importances, load_studies, trial_values
from otbench.reports.tables import (
    MARKDOWN,
    Column,
    cell_text,
    final_results,
    render_latex,
    render_markdown,
    summarize,
)

EXPERIMENT = "unit-suite"
NO_FINALS = "sweep-not-finished"  # a second experiment, with a trial run only
TRANSFER_10, TRANSFER_30, DISTILL = "digits:5-9@10", "digits:5-9@30", "digits:0-9"
#: Final test accuracies (fractions) per (scenario, task, method), one per seed 0, 1, 2.
FINAL = {
    ("transfer", TRANSFER_10, "finetune"): [0.70, 0.72, 0.74],
    ("transfer", TRANSFER_10, "fitnets"): [0.78, 0.80, 0.79],
    ("transfer", TRANSFER_10, "ot"): [0.85, 0.83, 0.84],
    ("transfer", TRANSFER_30, "finetune"): [0.88, 0.91, 0.89],  # OT's seeds - 2, 1, 2
    ("transfer", TRANSFER_30, "fitnets"): [0.905, 0.91, 0.915],  # ties OT at 91.0: both bold
    ("transfer", TRANSFER_30, "ot"): [0.90, 0.92, 0.91],
    ("distill", DISTILL, "finetune"): [0.60, 0.65, 0.62],
    ("distill", DISTILL, "ot"): [0.66, 0.70, 0.69],  # no fitnets here: a "—" cell
}
#: The regularizer's share of each epoch's time, per method.
OVERHEAD = {"finetune": 0.0, "fitnets": 0.02, "ot": 0.05}
WEIGHT = {"fitnets": 1.0, "ot": 0.1}
EPOCH_TIMES = [1.0, 1.0, 2.0]
#: Finished OT sweep trials on (transfer, digits:5-9@10): weight -> validation accuracy.
TRIALS = {0.001: 0.80, 0.01: 0.83, 0.1: 0.86, 1.0: 0.78}
#: The OT study's pruned trial: its last reported validation accuracy.
PRUNED_LAST = 0.6
#: The teacher's own run: (validation, test) accuracy on its source task.
TEACHER = (0.975, 0.961)
STUDY_OT = f"unit/transfer/{TRANSFER_10}/ot"
STUDY_FT = f"unit/transfer/{TRANSFER_10}/finetune"


def study_name(scenario: str, task: str, method: str) -> str:
    return f"unit/{scenario}/{task}/{method}"


def tags(stage: str, scenario: str, task: str, method: str, seed: int, **extra: object) -> dict:
    return {"stage": stage, "scenario": scenario, "scenario_id": scenario, "task": task,
            "method": method, "seed": seed, "teacher": "cnn-l", "student": "cnn-s",
            "suite": "unit",
            "study": study_name(scenario, task, method), "git_commit": "abc123",
            "otbench_version": "0.1.0", "version.torch": "2.5.0", "version.pot": "0.9.5",
            "version.python": "3.11.2", **extra}


def params(scenario: str, task: str, method: str, seed: int) -> dict:
    out = {"scenario": scenario, "task": task, "method": method, "seed": seed,
           "train.lr": 0.05, "train.epochs": 3, "student": "cnn-s", "teacher.model": "cnn-l",
           "evaluate_test": True, "layers": None, "tags.study": study_name(scenario, task,
                                                                         method)}
    if method in WEIGHT:
        out["params.weight"] = WEIGHT[method]
    return out


def log_final(uri: str, scenario: str, task: str, method: str, seed: int, test: float,
              artifacts: Path) -> None:
    commit = {"git_commit": "def456-dirty"} if (scenario, seed) == ("distill", 2) else {}
    with mlflow_run(uri, EXPERIMENT, run_name=f"{method} {task} {seed}", artifact_root=artifacts,
                    tags=tags("final", scenario, task, method, seed, **commit)) as run:
        run.log_params(params(scenario, task, method, seed))
        for epoch, seconds in enumerate(EPOCH_TIMES):
            run.log_metrics({"val/acc": test - 0.1 + 0.05 * epoch, "train/loss": 1.0 / (1 + epoch),
                             "time/epoch": seconds,
                             "time/regularizer": seconds * OVERHEAD[method]}, step=epoch)
        run.log_metrics({"val/acc_final": test - 0.01, "test/acc": test}, step=3)


def log_trials(uri: str, artifacts: Path) -> None:
    """A study parent run with finished, pruned (KILLED) and failed OT trials as children;
    and a finetune study parent without trials."""
    for method in ("ot", "finetune"):
        with mlflow_run(uri, EXPERIMENT, run_name=f"study {method}", artifact_root=artifacts,
                        tags=tags("study", "transfer", TRANSFER_10, method, 0)) as parent:
            if method == "finetune":
                continue
            for number, (weight, val) in enumerate(TRIALS.items()):
                with mlflow_run(uri, EXPERIMENT, run_name=f"trial {number}",
                                artifact_root=artifacts, parent_run_id=parent.run_id,
                                tags=tags("trial", "transfer", TRANSFER_10, "ot", 0,
                                          trial=number)) as run:
                    run.log_params({**params("transfer", TRANSFER_10, "ot", 0),
                                    "params.weight": weight})
                    run.log_metrics({"val/acc": val}, step=0)
                    run.log_metrics({"val/acc_final": val}, step=3)
            for number, error in ((4, RunStopped("pruned")), (5, FloatingPointError("NaN"))):
                with pytest.raises(type(error)), mlflow_run(
                        uri, EXPERIMENT, run_name=f"trial {number}", artifact_root=artifacts,
                        parent_run_id=parent.run_id,
                        tags=tags("trial", "transfer", TRANSFER_10, "ot", 0,
                                  trial=number)) as run:
                    run.log_params({"params.weight": 5.0})
                    raise error


def write_optuna(storage: str) -> None:
    """The OT study with four trials over two parameters; the finetune study with two trials
    and no parameter (importances are then not computable)."""
    ot = optuna.create_study(study_name=STUDY_OT, storage=storage, direction="maximize")
    distributions = {"weight": optuna.distributions.FloatDistribution(1e-4, 10, log=True),
                     "normalize": optuna.distributions.CategoricalDistribution(["none", "center"])}
    for number, (weight, val) in enumerate(TRIALS.items()):
        ot.add_trial(optuna.trial.create_trial(
            params={"weight": weight, "normalize": ["none", "center"][number % 2]},
            distributions=distributions, value=val))
    ot.add_trial(optuna.trial.create_trial(
        params={"weight": 5.0, "normalize": "none"}, distributions=distributions,
        state=optuna.trial.TrialState.PRUNED, intermediate_values={0: 0.5, 1: PRUNED_LAST}))
    finetune = optuna.create_study(study_name=STUDY_FT, storage=storage, direction="maximize")
    for val in (0.7, 0.72):
        finetune.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=val))


@dataclass(frozen=True)
class Store:
    uri: str
    folder: Path
    storage: str


def build_store(folder: Path) -> Store:
    """The whole fixture store: 24 finished final runs, one failed final run, trials."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    artifacts = folder / "artifacts"
    for (scenario, task, method), values in FINAL.items():
        for seed, test in enumerate(values):
            log_final(uri, scenario, task, method, seed, test, artifacts)
    with pytest.raises(RuntimeError), mlflow_run(
            uri, EXPERIMENT, run_name="failed", artifact_root=artifacts,
            tags=tags("final", "transfer", TRANSFER_10, "ot", 3)):
        raise RuntimeError("CUDA out of memory")
    log_trials(uri, artifacts)
    with mlflow_run(uri, EXPERIMENT, run_name="teacher", artifact_root=artifacts,
                    tags={**{k: v for k, v in tags("teacher", "source", "digits:0-4",
                                                   "finetune", 0).items() if k != "study"},
                          "model": "cnn-l"}) as teacher:
        teacher.log_metrics({"val/acc_final": TEACHER[0], "test/acc": TEACHER[1]})
    with mlflow_run(uri, NO_FINALS, run_name="t", artifact_root=artifacts,
                    tags=tags("trial", "cross", DISTILL, "ot", 0)):
        pass
    storage = f"sqlite:///{folder / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    write_optuna(storage)
    return Store(uri, folder, storage)


@contextmanager
def scratch_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder in memory (/dev/shm) where there is one: MLflow's SQLite store commits, and
    so syncs to disk, several times per run, which on a busy disk makes the fixture store
    take seconds longer than the tests themselves."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path_factory.mktemp("store")
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="otbench-report-") as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with scratch_dir(tmp_path_factory) as folder:
        yield build_store(folder)


@pytest.fixture(scope="module")
def report(store: Store) -> Path:
    """The report written with all defaults (the Optuna storage found beside mlflow.db)."""
    return write_report(store.uri, EXPERIMENT, store.folder / "report")


@pytest.fixture(scope="module")
def runs(store: Store) -> pd.DataFrame:
    return read_runs(store.uri, EXPERIMENT)


# --------------------------------------------------------------------------- collect
@pytest.mark.parametrize("text, value", [
    ("3", 3), ("-2", -2), ("0.1", 0.1), ("1.0e-05", 1e-5), ("true", True), ("False", False),
    ("null", None), ("none", "none"), ("", ""), ("no", "no"), ("on", "on"), ("cnn-s", "cnn-s"),
    ("[[stage1, stage1]]", "[[stage1, stage1]]"), (None, None)])
def test_cast_value_restores_logged_types(text: str | None, value: object) -> None:
    assert cast_value(text) == value
    assert type(cast_value(text)) is type(value)


def test_read_runs_pages_filters_and_casts(store: Store) -> None:
    everything = read_runs(store.uri, EXPERIMENT, page_size=5)  # 34 runs over 7 pages
    assert len(everything) == 24 + 1 + 2 + 6 + 1
    assert everything.run_id.is_unique
    final = read_runs(store.uri, EXPERIMENT, stages=["final"], page_size=5)
    assert len(final) == 25
    assert set(final.status) == {"FINISHED", "FAILED"}
    assert final.loc[final.status == "FAILED", "failure_reason"].item() == (
        "RuntimeError: CUDA out of memory")
    ot = read_runs(store.uri, EXPERIMENT, stages=["final", "trial"], tags={"method": "ot"})
    assert len(ot) == 9 + 1 + 6 and set(ot.method) == {"ot"}
    finished = final[final.status == "FINISHED"]
    assert finished.seed.dtype.kind == "i"
    assert finished["config.train.epochs"].dtype.kind == "i"
    assert finished["config.evaluate_test"].map(type).eq(bool).all()
    assert finished["config.layers"].isna().all()
    weights = finished.groupby("method")["params.weight"].first()
    assert weights["ot"] == 0.1 and weights["fitnets"] == 1.0 and pd.isna(weights["finetune"])
    trials = everything[everything.stage == "trial"]
    parents = everything[everything.stage == "study"]
    assert set(trials.parent_run_id) <= set(parents.run_id)


def test_timings_are_means_and_overhead_ratio(report: Path) -> None:
    results = pd.read_csv(report.parent / "results.csv")
    finished = results[results.status == "FINISHED"]
    assert finished["time/epoch_mean"].to_numpy() == pytest.approx(np.mean(EPOCH_TIMES))
    for method, share in OVERHEAD.items():
        assert finished.loc[finished.method == method, "time/overhead"].to_numpy() == (
            pytest.approx(share))


# --------------------------------------------------------------------------- table
class PublicClient:
    """Only ``MlflowClient``'s public history call, as a store without the bulk one offers."""

    def __init__(self, client: object) -> None:
        self.get_metric_history = client.get_metric_history


def test_histories_in_bulk_equal_those_read_run_by_run(store: Store, runs: pd.DataFrame,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    client = open_client(store.uri)
    queries: list[int] = []
    bulk = type(client._tracking_client.store).get_metric_history_bulk
    monkeypatch.setattr(type(client._tracking_client.store), "get_metric_history_bulk",
                        lambda self, ids, key, limit: queries.append(len(ids)) or bulk(
                            self, ids, key, limit))
    monkeypatch.setattr(collect, "BULK_RUNS", 10)
    keys = ("val/acc", "time/epoch", "test/acc", "never/logged")
    in_bulk = metric_histories(client, runs.run_id, keys)
    assert queries == [10, 10, 10, 4] * len(keys)  # 34 runs, ten per query
    by_run = metric_histories(PublicClient(client), runs.run_id, keys)
    pd.testing.assert_frame_equal(in_bulk, by_run)
    counts = in_bulk.key.value_counts()
    # 24 final runs and the teacher's run score test accuracy; final runs log epoch times.
    assert (counts["test/acc"], counts["time/epoch"]) == (24 + 1, 24 * len(EPOCH_TIMES))


def test_a_step_logged_twice_keeps_its_latest_value(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_run(uri, "resumed", run_name="r", tags={}) as run:
        run.log_metrics({"val/acc": 0.5}, step=0)
        run.log_metrics({"val/acc": 0.6}, step=1)
        run.flush()
        time.sleep(0.002)  # a later timestamp: the resumed run's
        run.log_metrics({"val/acc": 0.7}, step=1)
    client = open_client(uri)
    run_ids = [client.search_runs([find_experiment(client, "resumed").experiment_id])[0]
               .info.run_id]
    for reader in (client, PublicClient(client)):
        history = metric_histories(reader, run_ids, ["val/acc"])
        assert history[["step", "value"]].values.tolist() == [[0, 0.5], [1, 0.7]]


def expected_cells(test: str = "paired-t") -> dict[tuple[str, str, str], dict]:
    """Mean, std, n, paired difference to OT, p-value against OT (Holm over the column's
    two compared methods, by hand), bold and underline, computed here from FINAL."""
    out = {}
    for (scenario, task, method), values in FINAL.items():
        pct = np.array(values) * 100
        ref = np.array(FINAL[(scenario, task, "ot")]) * 100
        if method == "ot":
            p = np.nan
        elif test == "paired-t":
            p = stats.ttest_rel(pct, ref).pvalue
        elif test == "wilcoxon":
            p = stats.wilcoxon(pct, ref).pvalue
        else:
            p = stats.mannwhitneyu(pct, ref, alternative="two-sided").pvalue
        out[(scenario, task, method)] = {"mean": pct.mean(), "std": pct.std(ddof=1),
                                         "n": len(pct), "p": p,
                                         "diff": np.nan if method == "ot" else (pct - ref).mean()}
    for scenario, task in {(s, t) for s, t, _ in FINAL}:
        column = {m: c for (s, t, m), c in out.items() if (s, t) == (scenario, task)}
        levels = sorted({round(c["mean"], 1) for c in column.values()}, reverse=True)
        for cell in column.values():
            cell["best"] = round(cell["mean"], 1) == levels[0]
            cell["second"] = len(levels) > 1 and round(cell["mean"], 1) == levels[1]
        compared = sorted((c for m, c in column.items() if m != "ot"), key=lambda c: c["p"])
        if len(compared) == 1:
            compared[0]["holm"] = compared[0]["p"]
        else:  # Holm with two p-values: the smaller times 2, the larger at least that
            compared[0]["holm"] = min(1.0, 2 * compared[0]["p"])
            compared[1]["holm"] = min(1.0, max(compared[0]["holm"], compared[1]["p"]))
        column["ot"]["holm"] = np.nan
    return out


def markdown_cell(cell: dict) -> str:
    text = f"{cell['mean']:.1f} ± {cell['std']:.1f}"
    text = f"**{text}**" if cell["best"] else f"<u>{text}</u>" if cell["second"] else text
    return text + ("†" if cell["holm"] < 0.05 else "")


def test_expected_pattern_is_interesting() -> None:
    """The fixture exercises every mark: significant and not, significant alone but not
    after Holm's correction, a tie for best, a second."""
    cells = expected_cells()
    assert cells[("transfer", TRANSFER_10, "finetune")]["holm"] < 0.05
    assert cells[("transfer", TRANSFER_10, "fitnets")]["p"] < 0.05
    assert cells[("transfer", TRANSFER_30, "finetune")]["p"] < 0.05
    assert cells[("transfer", TRANSFER_30, "finetune")]["holm"] > 0.05
    assert cells[("transfer", TRANSFER_30, "fitnets")]["best"]
    assert cells[("transfer", TRANSFER_30, "ot")]["best"]
    assert cells[("transfer", TRANSFER_30, "finetune")]["second"]


@pytest.mark.parametrize("test", ["paired-t", "wilcoxon", "mannwhitney"])
def test_summary_matches_independent_statistics(runs: pd.DataFrame, test: str) -> None:
    options = ReportOptions(test=test)
    table = summarize(final_results(runs, options), options)
    expected = expected_cells(test)
    assert len(table.cells) == len(expected)
    for key, want in expected.items():
        scenario, task, method = key
        cell = table.cell(Column(scenario, scenario, task), method)
        assert cell is not None, key
        assert cell["n"] == want["n"] == 3  # the failed 4th OT seed is not counted
        assert cell["mean"] == pytest.approx(want["mean"])
        assert cell["std"] == pytest.approx(want["std"])
        assert cell["p_value"] == pytest.approx(want["p"], nan_ok=True)
        assert cell["p_holm"] == pytest.approx(want["holm"], nan_ok=True)
        assert cell["significant"] == (want["holm"] < 0.05)
        assert cell["diff"] == pytest.approx(want["diff"], nan_ok=True)
        assert (cell["best"], cell["second"]) == (want["best"], want["second"])
    assert table.cell(Column("distill", "distill", DISTILL), "fitnets") is None
    assert table.columns == [Column("transfer", "transfer", TRANSFER_10),
                             Column("transfer", "transfer", TRANSFER_30),
                             Column("distill", "distill", DISTILL)]
    assert table.methods == ["finetune", "fitnets", "ot"]
    assert table.overhead is not None
    assert table.overhead.to_dict() == pytest.approx({m: 100 * s for m, s in OVERHEAD.items()})


def test_markdown_table_cells_exactly(report: Path) -> None:
    lines = (report.parent / "table.md").read_text().splitlines()
    assert lines[0] == ("| Method | Transfer: Digits 5–9 @10 | Transfer: Digits 5–9 @30 | "
                        "Distillation: Digits 0–9 | Reg. time (%) |")
    rows = {line.split(" | ")[0].removeprefix("| "): line.strip("| ").split(" | ")[1:]
            for line in lines[2:5]}
    assert list(rows) == ["Fine-tune", "FitNets", "OT"]
    expected = expected_cells()
    labels = {"finetune": "Fine-tune", "fitnets": "FitNets", "ot": "OT"}
    columns = [("transfer", TRANSFER_10), ("transfer", TRANSFER_30), ("distill", DISTILL)]
    for method, label in labels.items():
        cells = [markdown_cell(expected[(s, t, method)]) if (s, t, method) in expected else "—"
                 for s, t in columns]
        assert rows[label] == [*cells, f"{100 * OVERHEAD[method]:.1f}"], label
    note = "\n".join(lines[5:])
    assert "n = 3 seeds per cell" in note
    assert ("†: differs from OT at level 0.05 after Holm's correction over the column's "
            "methods (paired t-test, two-sided, each seed paired with OT's same seed)") in note
    assert rows["OT"][0] == "**84.0 ± 1.0**"
    assert rows["Fine-tune"][0] == "72.0 ± 2.0†"


def test_uneven_seeds_show_n_and_single_seed_has_no_std() -> None:
    final = pd.DataFrame({
        "stage": "final", "status": "FINISHED", "scenario": "cross", "entry": "cross",
        "task": "digits@5", "method": ["ot", "ot", "mine"], "test/acc": [0.5, 0.7, 0.9]})
    options = ReportOptions()
    table = summarize(final_results(final, options), options)
    assert table.common_n is None
    column = Column("cross", "cross", "digits@5")
    assert cell_text(table, column, "ot", MARKDOWN) == "<u>60.0 ± 14.1 (n=2)</u>"
    assert cell_text(table, column, "mine", MARKDOWN) == "**90.0 (n=1)**"
    assert table.methods == ["ot", "mine"]  # a plugin method after the listed ones
    assert table.overhead is None
    assert "n seeds given per cell" in render_markdown(table)


def test_entries_sharing_scenario_and_task_stay_separate_columns() -> None:
    """Three teacher → student pairs distilled on one task are three columns, not one cell
    averaging them: a suite entry (tag scenario_id) keys the column."""
    final = pd.DataFrame({
        "stage": "final", "status": "FINISHED", "scenario": "distill", "task": "cifar100",
        "entry": ["r56-r20"] * 2 + ["wrn"] * 2, "method": "kd",
        "test/acc": [0.70, 0.72, 0.74, 0.76]})
    options = ReportOptions(task_names={"wrn": "WRN-40-2 to WRN-16-2"})
    table = summarize(final_results(final, options), options)
    assert table.columns == [Column("distill", "r56-r20", "cifar100"),
                             Column("distill", "wrn", "cifar100")]
    assert [table.cell(c, "kd")["mean"] for c in table.columns] == pytest.approx([71.0, 75.0])
    assert [table.label(c) for c in table.columns] == ["CIFAR-100 (r56-r20)",
                                                       "WRN-40-2 to WRN-16-2"]
    assert r"\multicolumn{2}{c}{Distillation}" in render_latex(table)
    assert stem(table.columns[1]) == "distill_wrn_cifar100"
    assert stem(Column("cross", "cross", TRANSFER_10)) == "cross_digits_5-9_at10"


def test_latex_is_balanced_booktabs_and_escaped(runs: pd.DataFrame, report: Path) -> None:
    default = (report.parent / "table.tex").read_text()
    options = ReportOptions(method_names={"fitnets": "Fit_Nets & co"}, mark="*",
                            task_names={DISTILL: "10% of #digits"})
    custom = render_latex(summarize(final_results(runs, options), options))
    for tex in (default, custom):
        for rule in (r"\toprule", r"\bottomrule"):
            assert tex.count(rule) == 1
        assert tex.count(r"\midrule") == 2  # under the header, above the differences
        for env in ("table", "tabular"):
            assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}") == 1
        assert tex.count("{") == tex.count("}")
        spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", tex)
        assert spec is not None
        body = tex[tex.index(r"\toprule"):tex.index(r"\bottomrule")]
        rows = [r for r in body.split("\n") if r.endswith(r"\\")]
        assert len(rows) == 2 + 3 + 3  # two header rows, three methods, two differences and
        # the detectable one
        for row in rows:
            spans = sum(int(w) for w in re.findall(r"\\multicolumn\{(\d+)\}", row))
            separators = len(re.findall(r"(?<!\\)&", row))  # an escaped \& is text
            plain = separators + 1 - len(re.findall(r"\\multicolumn", row))
            assert spans + plain == len(spec.group(1)), row
    assert r"\multicolumn{2}{c}{Transfer}" in default
    assert r"\cmidrule(lr){2-3} \cmidrule(lr){4-4}" in default
    assert r"\textbf{84.0 $\pm$ 1.0}" in default
    assert r"72.0 $\pm$ 2.0$^{\dagger}$" in default
    assert r"Fit\_Nets \& co" in custom and r"10\% of \#digits" in custom
    assert r"$^{*}$" in custom and "†" not in custom
    assert r"Fine-tune $-$ OT & -12.0 [-18.6, -5.4]" in default  # mean ± t(2) sd / sqrt 3
    assert r"Detectable ($\alpha$ 0.05, power 0.8)" in default


def test_html_table_marks(report: Path) -> None:
    fragment = (report.parent / "table.html").read_text()
    assert fragment.count("<tr>") == 2 + 3 + 3  # header, methods, differences, detectable
    assert '<tbody class="differences">' in fragment
    assert "<td>-12.0 [-18.6, -5.4]</td>" in fragment
    assert '<th colspan="2">Transfer</th>' in fragment
    assert "<b>84.0 ± 1.0</b>" in fragment and "72.0 ± 2.0<sup>†</sup>" in fragment
    assert "<td>—</td>" in fragment


# --------------------------------------------------------------------------- files
def test_report_folder_outputs(report: Path) -> None:
    folder = report.parent
    for name in ("results.csv", "summary.csv", "table.md", "table.tex", "table.html",
                 "report.html"):
        assert (folder / name).is_file(), name
    results = pd.read_csv(folder / "results.csv")
    assert len(results) == 25  # one row per final run, the failed one included
    assert list(results.columns[:7]) == ["run_id", "run_name", "status", "scenario", "task",
                                         "method", "seed"]
    assert "params.weight" in results and "test/acc" in results
    assert results.loc[results.status == "FINISHED", "test/acc"].sort_values().tolist() == (
        pytest.approx(sorted(v for values in FINAL.values() for v in values)))
    assert results.scenario.tolist() == ["transfer"] * 19 + ["distill"] * 6
    summary = pd.read_csv(folder / "summary.csv")
    assert len(summary) == len(FINAL)


def figure_files(report: Path) -> dict[str, Path]:
    return {p.name: p for p in (report.parent / "figures").iterdir()}


def test_every_figure_written_as_png_and_pdf_and_not_blank(report: Path) -> None:
    files = figure_files(report)
    stems = {
        "bars_transfer", "bars_distill",
        "curves_transfer_digits_5-9_at10", "curves_transfer_digits_5-9_at30",
        "curves_distill_digits_0-9", "samples_transfer_digits_5-9",
        "sensitivity_transfer_digits_5-9_at10_ot_weight",
        f"history_{STUDY_OT.replace('/', '_').replace(':', '_').replace('@', '_at')}",
        f"importance_{STUDY_OT.replace('/', '_').replace(':', '_').replace('@', '_at')}",
    }
    assert set(files) == {f"{s}.{ext}" for s in stems for ext in ("png", "pdf")}
    for name, path in files.items():
        if name.endswith(".pdf"):
            assert path.read_bytes()[:5] == b"%PDF-" and path.stat().st_size > 2000
        else:
            pixels = matplotlib.image.imread(path)[..., :3]
            assert pixels.std() > 0.05, name
            assert pixels.shape[1] >= 3.3 * 200 * 0.8, name  # column width at 200 dpi


def legend_labels(fig) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


def test_figure_series(runs: pd.DataFrame, store: Store) -> None:
    options = ReportOptions()
    final = final_results(runs, options)
    table = summarize(final, options)

    bars = accuracy_bars(table, "transfer").axes[0]
    containers = [c for c in bars.containers if isinstance(c, BarContainer)]
    assert len(containers) == 3
    heights = [b.get_height() for c in containers for b in c]
    assert heights == pytest.approx([expected_cells()[("transfer", t, m)]["mean"]
                                     for m in ("finetune", "fitnets", "ot")
                                     for t in (TRANSFER_10, TRANSFER_30)])
    assert [c.patches[0].get_facecolor()[:3] for c in containers] == [
        pytest.approx(matplotlib.colors.to_rgb(METHOD_COLORS[m]))
        for m in ("finetune", "fitnets", "ot")]
    distill = accuracy_bars(table, "distill")
    assert len([c for c in distill.axes[0].containers if isinstance(c, BarContainer)]) == 2
    assert bars.get_ylabel() == "Test accuracy (%)"

    histories = metric_histories(open_client(store.uri), final.run_id)
    curves = validation_curves(final, histories, table, Column("transfer", "transfer",
                                                                TRANSFER_10))
    ax = curves.axes[0]
    assert len(ax.lines) == 3 and len(ax.collections) == 3  # a line and a band per method
    assert legend_labels(curves) == ["Fine-tune", "FitNets", "OT"]
    assert ax.lines[2].get_ydata() == pytest.approx([74.0, 79.0, 84.0])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Epoch", "Validation accuracy (%)")

    assert sample_size_families(table) == [("transfer", "digits:5-9")]
    samples = accuracy_vs_samples(table, "transfer", "digits:5-9").axes[0]
    assert len(samples.lines) == 3
    assert list(samples.lines[0].get_xdata()) == [10, 30]
    assert samples.get_xlabel() == "Training samples per class"

    fig = sensitivity(runs, table, Column("transfer", "transfer", TRANSFER_10))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    points = np.asarray(ax.collections[0].get_offsets())
    assert points.ravel() == pytest.approx([x for w, v in TRIALS.items()
                                            for x in (w, 100 * v)])
    assert sorted(legend_labels(fig)) == ["Fine-tune (test)", "OT: final (test)",
                                          "OT: trials (val.)"]


def test_optuna_figures(store: Store) -> None:
    studies, notes = load_studies(store.storage, [STUDY_OT, STUDY_FT, "unit/missing"])
    assert set(studies) == {STUDY_OT, STUDY_FT}
    assert notes == ["Study 'unit/missing' is not in the Optuna storage; no history or "
                     "importance plot."]
    history = history_figure(trial_values(studies[STUDY_OT]), STUDY_OT, "ot").axes[0]
    complete, pruned = (np.asarray(c.get_offsets()) for c in history.collections)
    assert len(complete) == len(TRIALS)
    assert pruned.tolist() == [[len(TRIALS), PRUNED_LAST]]  # at its last reported value
    assert history.lines[0].get_ydata().tolist() == pytest.approx([0.80, 0.83, 0.86, 0.86,
                                                                   0.86])
    found = importances(studies[STUDY_OT])
    assert not isinstance(found, str)
    assert found.sum() == pytest.approx(1.0)
    importance = importance_figure(found, STUDY_OT, "ot")
    bars = [c for c in importance.axes[0].containers if isinstance(c, BarContainer)]
    assert len(bars) == 1 and len(bars[0]) == 2
    assert importances(studies[STUDY_FT]) == (
        "no hyper-parameter varies across the completed trials")
    flat = optuna.create_study(direction="maximize")  # in memory
    for weight in (0.1, 1.0):
        flat.add_trial(optuna.trial.create_trial(
            params={"weight": weight}, value=0.5,
            distributions={"weight": optuna.distributions.FloatDistribution(1e-4, 10)}))
    assert importances(flat) == "the objective is the same in every completed trial"
    single = optuna.create_study(direction="maximize")
    for weight, value in ((0.1, 0.5), (1.0, 0.6), (3.0, 0.55)):
        single.add_trial(optuna.trial.create_trial(
            params={"weight": weight}, value=value,
            distributions={"weight": optuna.distributions.FloatDistribution(1e-4, 10)}))
    assert importances(single).startswith("one hyper-parameter searched (weight)")


def test_method_colors_fixed_and_deterministic_for_plugins() -> None:
    assert method_color("ot") == METHOD_COLORS["ot"]
    plugin = method_color("my_plugin")
    assert plugin == method_color("my_plugin")
    assert plugin not in METHOD_COLORS.values()


def test_settings_and_provenance_tables(runs: pd.DataFrame) -> None:
    final = final_results(runs, ReportOptions())
    shared = dict(shared_settings(final).itertuples(index=False))
    assert shared["train.lr"] == "0.05" and shared["train.epochs"] == "3"
    assert shared["evaluate_test"] == "True" and shared["student"] == "cnn-s"
    assert not {"scenario", "seed", "tags.study", "params.weight"} & set(shared)
    cells = per_cell_settings(final, ReportOptions())
    assert cells[["scenario", "task", "method"]].to_numpy().tolist()[:3] == [
        ["Transfer", "Digits 5–9 @10", m] for m in ("Fine-tune", "FitNets", "OT")]
    assert cells["params.weight"].tolist() == ["", "1.0", "0.1"] * 2 + ["", "0.1"]
    versions = software(runs).set_index("software")
    assert versions.loc["git_commit", "values (runs)"] == "abc123 (32); def456-dirty (2)"
    assert versions.loc["git_commit", "consistent"] == "NO"
    assert versions.loc["torch", "consistent"] == "yes"
    counts = run_counts(runs).set_index("stage")
    assert counts.loc["final", "FAILED"] == 1
    # A pruned trial did what was asked: FINISHED (KILLED is for dead workers).
    assert counts.loc["trial", "FINISHED"] == len(TRIALS) + 1 and "KILLED" not in counts


# --------------------------------------------------------------------------- page
def test_report_html_is_self_contained(report: Path) -> None:
    page = report.read_text()
    assert page.count('<img src="data:image/png;base64,') == 9
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<script" not in page and "<link" not in page
    assert 'class="results"' in page
    for text in ("Settings shared by every final run", "train.lr", "Software and git commits",
                 "abc123 (", "def456-dirty (", "Failed final runs", "CUDA out of memory",
                 "Study &#x27;unit/transfer/digits:5-9@10/finetune&#x27;: no history or "
                 "importance plot",
                 "no finished OT sweep trial"):
        assert text in page, text


def test_unknown_experiment_lists_existing(store: Store, tmp_path: Path) -> None:
    with pytest.raises(UnknownExperimentError, match=re.escape(
            "Did you mean 'unit-suite'? Existing experiments: 'Default', "
            f"'{NO_FINALS}', 'unit-suite'.")):
        write_report(store.uri, "unit-suit", tmp_path)


def test_no_final_runs_says_run_a_sweep(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NoFinalRunsError, match="run a sweep first"):
        write_report(store.uri, NO_FINALS, tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_missing_store_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no MLflow store"):
        write_report(f"sqlite:///{tmp_path / 'none.db'}", EXPERIMENT, tmp_path)
    assert not (tmp_path / "none.db").exists()


def test_cli_report_arguments(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture) -> None:
    """The CLI's defaults reach write_report (stubbed: rendering is tested above)."""
    calls = []

    def fake(uri: str, experiment: str, out: Path, **kwargs: object) -> Path:
        calls.append((uri, experiment, out, kwargs))
        return out / "report.html"

    monkeypatch.setattr("otbench.reports.report.write_report", fake)
    assert main(["report", "--results-dir", str(store.folder), "--experiment", EXPERIMENT,
                 "--format", "md,csv"]) == 0
    assert calls == [(store.uri, EXPERIMENT, store.folder / "report" / EXPERIMENT,
                      {"storage": None, "formats": "md,csv", "options": None})]
    assert capsys.readouterr().out == (
        f"report: {store.folder / 'report' / EXPERIMENT / 'report.html'}\n")
    options = tmp_path / "options.yaml"
    options.write_text("test: wilcoxon\n")
    assert main(["report", "--tracking-uri", store.uri, "--experiment", EXPERIMENT, "--out",
                 str(tmp_path / "out"), "--storage", store.storage, "--options",
                 str(options)]) == 0
    assert calls[1][:3] == (store.uri, EXPERIMENT, tmp_path / "out")
    assert calls[1][3] == {"storage": store.storage, "formats": "md,tex,html,csv",
                           "options": ReportOptions(test="wilcoxon")}


def test_cli_report_errors(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = str(store.folder)
    assert main(["report", "--results-dir", folder]) == 2
    assert f"pass --experiment NAME: the store at {store.uri} holds 2 experiments" in (
        capsys.readouterr().err)
    assert main(["report", "--results-dir", folder, "--experiment", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert main(["report", "--results-dir", folder, "--experiment", EXPERIMENT,
                 "--format", "md,pdf"]) == 2
    assert "unknown report format(s) pdf" in capsys.readouterr().err
    assert main(["report", "--results-dir", str(tmp_path)]) == 2
    assert "no MLflow store at" in capsys.readouterr().err


def test_options_yaml_and_typos(tmp_path: Path) -> None:
    path = tmp_path / "options.yaml"
    path.write_text("test: wilcoxon\nalpha: 0.01\nmethod_names: {ot: OT (ours)}\n")
    options = ReportOptions.from_yaml(path)
    assert (options.test, options.alpha, options.method_label("ot")) == ("wilcoxon", 0.01,
                                                                          "OT (ours)")
    with pytest.raises(ConfigError, match="Did you mean 'alpha'"):
        ReportOptions.from_mapping({"alpah": 0.1})
    with pytest.raises(ConfigError, match="Valid tests: mannwhitney, paired-t, wilcoxon"):
        ReportOptions(test="student")


@pytest.mark.parametrize("task, label", [
    ("digits:5-9@10", "Digits 5–9 @10"), ("digits", "Digits"), ("cifar100@50", "CIFAR-100 @50"),
    ("imagefolder=/data/CUB_200_2011:0-19@30", "CUB_200_2011 0–19 @30"),
    ("imagefolder=StanfordDogs", "StanfordDogs"), ("plugin-data:1,2", "plugin-data 1,2")])
def test_task_labels(task: str, label: str) -> None:
    assert ReportOptions().task_label(task) == label


def test_order_options() -> None:
    options = ReportOptions(task_order=["digits@30"], method_order=["ot", "kd"])
    assert options.order_tasks(t for t in ["digits@5", "digits@30", "digits", "a@2"]) == [
        "digits@30", "a@2", "digits", "digits@5"]
    assert options.order_methods(["zz", "kd", "ot", "at"]) == ["ot", "kd", "at", "zz"]
    assert ReportOptions().order_scenarios(["cross", "transfer", "distill"]) == [
        "transfer", "distill", "cross"]


@pytest.fixture(autouse=True)
def _no_pyplot_leak() -> Iterator[None]:
    """Builders use Figure() directly: no pyplot figure may be left open by a report."""
    import matplotlib.pyplot as plt

    yield
    assert plt.get_fignums() == []


def folder_bytes(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_report_failing_midway_leaves_the_previous_one_intact(report: Path, store: Store,
                                                                 monkeypatch) -> None:
    folder = report.parent
    before = folder_bytes(folder)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after the tables and result figures were written

    monkeypatch.setattr(report_module, "study_figures_for", killed)
    with pytest.raises(KeyboardInterrupt):
        write_report(store.uri, EXPERIMENT, folder)
    assert folder_bytes(folder) == before
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".report")]


def test_report_leftovers_of_a_killed_process_are_cleaned(tmp_path: Path) -> None:
    folder = tmp_path / "report"
    staging = tmp_path / ".report.partial-1"
    staging.mkdir()
    (staging / "table.md").write_text("half")
    retired = tmp_path / ".report.previous-1"  # killed between moving out and moving in
    retired.mkdir()
    (retired / "report.html").write_text("old")
    with replaced_whole(folder) as new:
        assert (folder / "report.html").read_text() == "old"  # restored, until replaced
        (new / "report.html").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    assert (folder / "report.html").read_text() == "new"


def test_a_folder_that_is_not_a_report_is_never_replaced(store: Store, tmp_path) -> None:
    (tmp_path / "mlflow.db").write_text("not a report")
    with pytest.raises(ReportError, match=r"holds other things than a report \(mlflow.db\)"):
        write_report(store.uri, EXPERIMENT, tmp_path)
    assert (tmp_path / "mlflow.db").read_text() == "not a report"


# --------------------------------------------------------------------------- rough edges
def test_sensitivity_log_axis_labels_never_touch(runs: pd.DataFrame) -> None:
    """Trials over five decades: the labels are fewer, not run into each other."""
    wide = runs.copy()
    trials = wide.index[(wide.stage == "trial") & wide["val/acc_final"].notna()]
    wide.loc[trials, "params.weight"] = [1e-4, 1e-2, 1.0, 10.0]
    options = ReportOptions()
    table = summarize(final_results(wide, options), options)
    fig = sensitivity(wide, table, Column("transfer", "transfer", TRANSFER_10))
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    shown = [t for t, x in zip(ax.get_xticklabels(), ax.get_xticks(), strict=True)
             if low <= x <= high and t.get_text()]
    assert len(shown) >= 3
    boxes = [t.get_window_extent(renderer) for t in shown]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), \
        [t.get_text() for t in shown]


def test_searched_parameters_of_every_method_get_a_sensitivity_plot(runs: pd.DataFrame) -> None:
    column = Column("transfer", "transfer", TRANSFER_10)
    ot_trials = runs[(runs.stage == "trial") & (runs.method == "ot")]
    fitnets = ot_trials.assign(method="fitnets", run_id=ot_trials.run_id + "-f",
                               **{"params.temperature": 2.0})  # fixed: not searched
    both = pd.concat([runs, fitnets], ignore_index=True)
    assert searched_params(both, column, "ot") == ["params.weight"]
    assert searched_params(both, column, "fitnets") == ["params.weight"]
    assert searched_params(both, column, "finetune") == []


def test_unsearched_studies_get_a_note_not_empty_panels(report: Path) -> None:
    page = report.read_text()
    assert html.escape(f"Study {STUDY_FT!r}: no history or importance plot (2 finished "
                       "trial(s) and no hyper-parameter searched).") in page
    assert not list((report.parent / "figures").glob("history_*finetune*"))


def test_chosen_hyper_parameters_are_rounded(runs: pd.DataFrame) -> None:
    final = final_results(runs, ReportOptions())
    precise = final.assign(**{"params.weight": final["params.weight"].where(
        final.method != "ot", 0.8870568443732516)})
    cells = per_cell_settings(precise, ReportOptions())
    assert set(cells.loc[cells.method == "OT", "params.weight"]) == {"0.8871"}


def test_latex_label_follows_the_suite_and_ranges_use_en_dashes(report: Path,
                                                                 runs: pd.DataFrame) -> None:
    tex = (report.parent / "table.tex").read_text()
    assert r"\label{tab:unit-suite}" in tex and "Digits 5--9 @10" in tex
    markdown = (report.parent / "table.md").read_text()
    assert "Digits 5–9 @10" in markdown and "5--9" not in markdown
    options = ReportOptions(latex_label="tab:transfer-main")
    assert r"\label{tab:transfer-main}" in render_latex(
        summarize(final_results(runs, options), options))


def test_every_method_of_a_report_gets_its_own_color() -> None:
    """Plugins whose names hash to one color still get two in a report; none is near a
    built-in method's color (a gray passing for Fine-tune)."""
    names = [f"plugin_{i}" for i in range(50)]
    by_hash: dict[str, str] = {}
    twins = next((by_hash[method_color(n)], n) for n in names
                 if by_hash.setdefault(method_color(n), n) != n)
    methods = [*METHOD_COLORS, *twins]
    with method_palette(methods):
        colors = [method_color(m) for m in methods]
    assert len(set(colors)) == len(colors)
    rgb = {c: np.array(matplotlib.colors.to_rgb(c)) for c in FALLBACK_COLORS}
    fixed = [np.array(matplotlib.colors.to_rgb(c)) for c in METHOD_COLORS.values()]
    for color, value in rgb.items():
        assert min(np.linalg.norm(value - f) for f in fixed) > 0.2, color
        assert min(np.linalg.norm(value - rgb[o]) for o in rgb if o != color) > 0.2, color


def test_report_states_the_teachers_accuracy(report: Path) -> None:
    page = report.read_text()
    assert "Teachers" in page
    assert f"{TEACHER[1] * 100:.1f}" in page and f"{TEACHER[0] * 100:.1f}" in page


def test_heat_map_columns_trained_from_scratch_come_first(runs: pd.DataFrame) -> None:
    options = ReportOptions()
    table = summarize(final_results(runs, options), options)
    assert table.columns[0].scenario == "transfer"
    assert [c.scenario for c in plan_columns(table)] == ["distill", "transfer", "transfer"]
