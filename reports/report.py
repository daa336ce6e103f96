"""Assemble a report folder from one MLflow experiment and its Optuna studies::

    out/results.csv   one row per final run (tidy)     out/summary.csv  one row per table cell
    out/table.md|tex|html                              out/figures/*.png|pdf
    out/report.html   everything above on one self-contained page

Reading (:mod:`.collect`, :mod:`.studies`), statistics (:mod:`.tables`,
:mod:`.representation`), figures (:mod:`.figures`) and the page (:mod:`.html`) live in their
own modules; this one only puts their parts in order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException

from otbench.benchmark.config import SCENARIOS
from otbench.errors import ConfigError

from . import ranks, representation, settings, studies
from .atomic import replaced_whole
from .collect import (
    DIAGNOSTICS_ARTIFACT,
    HPARAM_PREFIX,
    add_timings,
    find_experiment,
    iter_runs,
    load_plans,
    metric_histories,
    open_client,
    runs_frame,
)
from .errors import NoFinalRunsError
from .figures import accuracy, diagnostics
from .figures import studies as study_figures
from .figures.style import method_palette, save_figure
from .html import FigureEntry, PageContent, render_page
from .options import FORMATS, ReportOptions, slug
from .tables import (
    Column,
    ResultTable,
    final_results,
    in_column,
    render_html,
    render_latex,
    render_markdown,
    summarize,
)

#: results.csv columns first (when present), then hyper-parameters, in this order.
RESULT_COLUMNS = ("run_id", "run_name", "status", "scenario", "task", "method", "seed",
                  "entry", "study", "teacher", "student")
RESULT_METRICS = ("test/acc", "val/acc_final", "time/epoch_mean", "time/regularizer_mean",
                  "time/overhead", "git_commit", "otbench_version", "start_time",
                  "failure_reason")


def write_report(tracking_uri: str, experiment: str, out_dir: str | Path, *,
                 storage: str | None = None, formats: Iterable[str] | str = FORMATS,
                 options: ReportOptions | Mapping[str, Any] | None = None) -> Path:
    """Write the report of one experiment into ``out_dir`` and return ``report.html``'s path.

    ``storage`` is the Optuna storage URL for history and importance plots; by default the
    ``optuna.db`` beside a SQLite tracking store, when there is one. ``formats`` picks the
    table files (``report.html`` is always written). The report is written beside
    ``out_dir`` and then replaces it whole (see :mod:`.atomic`), so a report that fails or is
    killed half-way leaves the previous one as it was.

    Raises :class:`NoFinalRunsError` when the experiment has no finished final run, and
    :class:`UnknownExperimentError` (listing the existing ones) for a wrong name.
    """
    out = Path(out_dir)
    with replaced_whole(out) as staging:
        page = _write_report(tracking_uri, experiment, staging, storage, formats, options)
    return out / page.relative_to(staging)


def _write_report(tracking_uri: str, experiment: str, out: Path, storage: str | None,
                  formats: Iterable[str] | str,
                  options: ReportOptions | Mapping[str, Any] | None) -> Path:
    opts = options if isinstance(options, ReportOptions) else ReportOptions.from_mapping(options)
    if opts.latex_label is None:  # two suites' tables in one paper get two labels
        opts = dataclasses.replace(opts, latex_label=f"tab:{slug(experiment)}")
    wanted = check_formats(formats)
    client = open_client(tracking_uri)
    exp = find_experiment(client, experiment)
    runs = runs_frame(iter_runs(client, exp.experiment_id))
    final = final_results(runs, opts)
    if final.empty:
        raise NoFinalRunsError(
            f"experiment {experiment!r} has no finished final-stage run with {opts.metric}: "
            "run a sweep first (otbench sweep SUITE), which ends with the final stage")
    histories = metric_histories(client, final.run_id)
    runs = add_timings(runs, histories)
    final = final_results(runs, opts)
    table = summarize(final, opts)

    out.mkdir(parents=True, exist_ok=True)
    write_tables(table, runs, out, wanted)
    figures_dir = out / "figures"
    storage = storage or studies.default_storage(tracking_uri)
    with method_palette(runs.method.dropna().astype(str)):
        figures, notes = result_figures(runs, histories, table, figures_dir)
        rank_figures, rank_notes, rank_texts = ranks.rank_section(table, out, "csv" in wanted)
        diag_figures, diag_notes, diag_texts = representation_section(
            client, final, table, out, "csv" in wanted)
        sweep_figures, study_notes = study_figures_for(runs, storage, figures_dir)
    content = PageContent(
        title=f"otbench report: {experiment}",
        facts=_facts(tracking_uri, experiment, storage, runs, final),
        table_html=render_html(table),
        figures=figures + rank_figures + diag_figures + sweep_figures,
        tables=_context_tables(runs, final, opts),
        notes=notes + rank_notes + diag_notes + study_notes,
        section_texts={**rank_texts, **diag_texts})
    page = out / "report.html"
    page.write_text(render_page(content, out), encoding="utf-8")
    return page


def check_formats(formats: Iterable[str] | str) -> set[str]:
    """The wanted table formats, from a list or a comma-separated string."""
    if isinstance(formats, str):
        formats = formats.split(",")
    wanted = {f.strip().lower() for f in formats if f.strip()}
    unknown = sorted(wanted - set(FORMATS))
    if unknown:
        raise ConfigError(f"unknown report format(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(FORMATS)}")
    return wanted


def write_tables(table: ResultTable, runs: pd.DataFrame, out: Path, formats: set[str]) -> None:
    renderers = {"md": ("table.md", render_markdown), "tex": ("table.tex", render_latex),
                 "html": ("table.html", render_html)}
    for fmt, (name, render) in renderers.items():
        if fmt in formats:
            (out / name).write_text(render(table), encoding="utf-8")
    if "csv" in formats:
        results_table(runs, table.options).to_csv(out / "results.csv", index=False)
        table.cells.to_csv(out / "summary.csv", index=False)


def results_table(runs: pd.DataFrame, options: ReportOptions) -> pd.DataFrame:
    """Every final-stage run (failed ones too, with their reason), in table order."""
    final = runs[runs.stage == "final"]
    hparams = sorted(c for c in final.columns if c.startswith(HPARAM_PREFIX))
    columns = [c for c in (*RESULT_COLUMNS, *hparams, *RESULT_METRICS) if c in final.columns]
    order = {"scenario": options.order_scenarios(final.scenario.dropna().unique()),
             "task": options.order_tasks(final.task.dropna().unique()),
             "entry": sorted(final.entry.dropna().unique()),
             "method": options.order_methods(final.method.dropna().unique())}
    ranks = {k: {v: i for i, v in enumerate(o)} for k, o in order.items()}
    keys = final.assign(**{f"_{k}": final[k].map(r) for k, r in ranks.items()})
    keys = keys.sort_values(["_scenario", "_task", "_entry", "_method", "seed"])
    return keys[columns].reset_index(drop=True)


def stem(column: Column) -> str:
    """A column's file stem; the entry is named only when it is not just the scenario."""
    parts = [column.scenario] + ([column.entry] if column.entry != column.scenario else [])
    return "_".join(slug(p) for p in [*parts, column.task])


def _entry(section: str, caption: str, fig: Figure, folder: Path, name: str) -> FigureEntry:
    """Write ``fig`` as ``name``.png and .pdf; its entry in the page."""
    return FigureEntry(section, caption, *save_figure(fig, folder, name))


def result_figures(runs: pd.DataFrame, histories: pd.DataFrame, table: ResultTable,
                   folder: Path) -> tuple[list[FigureEntry], list[str]]:
    """Bars per scenario, curves per cell column, accuracy vs. samples per task family, each
    method's sensitivity to every hyper-parameter its sweep searched; notes say what could
    not be drawn."""
    opts = table.options
    final = final_results(runs, opts)
    entries = []
    for scenario, _ in table.scenarios:
        entries.append(_entry(
            "Accuracy", f"{opts.scenario_label(scenario)}: test accuracy, mean ± std over "
            "seeds", accuracy.accuracy_bars(table, scenario), folder, f"bars_{slug(scenario)}"))
    for column in table.columns:
        entries.append(_entry(
            "Validation curves",
            f"{table.title(column)}: validation accuracy per epoch, mean ± std",
            accuracy.validation_curves(final, histories, table, column), folder,
            f"curves_{stem(column)}"))
    for scenario, family in accuracy.sample_size_families(table):
        entries.append(_entry(
            "Accuracy vs. samples per class",
            f"{opts.scenario_label(scenario)} · {opts.task_label(family)}: test accuracy vs. "
            "training samples per class", accuracy.accuracy_vs_samples(table, scenario, family),
            folder, f"samples_{slug(scenario)}_{slug(family)}"))
    notes = []
    for column in table.columns:
        for method in table.methods:
            label = opts.method_label(method)
            searched = accuracy.searched_params(runs, column, method)
            if not searched and method == opts.reference:
                notes.append(f"{table.title(column)}: no finished {label} sweep trials with a "
                             "searched hyper-parameter; no sensitivity plot.")
            for param in searched:
                name = param.removeprefix(HPARAM_PREFIX)
                entries.append(_entry(
                    SENSITIVITY_SECTION, f"{table.title(column)}: {label} validation accuracy "
                    f"over sweep trials vs. {name}",
                    accuracy.sensitivity(runs, table, column, method, param), folder,
                    f"sensitivity_{stem(column)}_{slug(method)}_{slug(name)}"))
    return entries, notes


SENSITIVITY_SECTION = "Sensitivity to the searched hyper-parameters"
DIAG_SECTION = "Representation diagnostics"
DIAG_CSV = "diagnostics.csv"


def representation_section(client: Any, final: pd.DataFrame, table: ResultTable, out: Path,
                           csv: bool = True
                           ) -> tuple[list[FigureEntry], list[str], dict[str, list[str]]]:
    """Distance and CKA curves, stability curves, accuracy vs. final distance, the transport
    plans of one OT run, and a paragraph computed from them. Runs without diagnostics
    (``diagnostics: false``) give a note instead."""
    if not representation.has_diagnostics(final):
        return [], ["No representation diagnostics (diag/* metrics) in the final runs "
                    "(diagnostics were off): no distance, CKA, stability or transport-plan "
                    "figures."], {}
    opts = table.options
    folder = out / "figures"
    entries, notes = column_diagnostics(client, final, table, folder)
    points = representation.final_distances(final, opts.metric)
    entries.append(_entry(
        DIAG_SECTION, f"{accuracy.metric_label(opts)} vs. final OT distance to the teacher at "
        "each run's deepest diagnosed layer, one point per final run",
        diagnostics.accuracy_vs_distance(points, table), folder, "diag_accuracy_vs_distance"))
    correlations = representation.distance_correlations(points, table)
    if csv:
        points.to_csv(out / DIAG_CSV, index=False)
    sentences = representation.summary_sentences(correlations, table)
    return entries, notes, {DIAG_SECTION: [" ".join(sentences)]} if sentences else {}


def column_diagnostics(client: Any, final: pd.DataFrame, table: ResultTable, folder: Path
                       ) -> tuple[list[FigureEntry], list[str]]:
    """The curve grid of each result column and one plan heat map."""
    entries: list[FigureEntry] = []
    notes: list[str] = []
    layers = representation.logged_layers(final)
    histories = metric_histories(client, final.run_id, representation.history_keys(layers))
    for column in table.columns:
        here = representation.logged_layers(final[in_column(final, column)])
        if not here:
            notes.append(f"{table.title(column)}: no diagnostics logged; no representation "
                         "figures.")
            continue
        data = representation.curve_data(final, histories, table, column,
                                          ("ot", "cka", "stability"), here)
        entries.append(_entry(
            DIAG_SECTION, f"{data.heading}: OT distance to the teacher, linear CKA (epoch 0: "
            "before training) and the fraction of student neurons whose matched teacher neuron "
            "changed since the previous recorded epoch, mean ± std over seeds, one column of "
            "panels per layer", diagnostics.diagnostic_curves(data), folder,
            f"diag_curves_{stem(column)}"))
    plan, plan_notes = _plan_figure(client, final, table, folder)
    return entries + plan, notes + plan_notes


def _plan_figure(client: Any, final: pd.DataFrame, table: ResultTable, folder: Path
                 ) -> tuple[list[FigureEntry], list[str]]:
    """Heat maps of one OT run at its deepest layer (the one the accuracy scatter uses; the
    curves show every layer's matching stability): the first seed's, in the first column
    whose plans can be read, columns trained from scratch (distill, cross) first: in transfer
    the student starts as the teacher and its plan is the identity, which shows no
    re-allocation; a note for each column tried before, or when there is none."""
    notes = []
    for column in plan_columns(table):
        name = table.title(column)
        runs = final[in_column(final, column)]
        ot_runs = runs[runs.method == "ot"].sort_values("seed")
        if ot_runs.empty:
            continue
        run = ot_runs.iloc[0]
        try:
            plans, epochs = load_plans(client, run.run_id)
        except (OSError, KeyError, ValueError, MlflowException) as err:
            notes.append(f"{name}: no transport-plan heat map (run {run.run_id}: cannot read "
                         f"{DIAGNOSTICS_ARTIFACT}: {type(err).__name__}).")
            continue
        if not plans:
            notes.append(f"{name}: {DIAGNOSTICS_ARTIFACT} of run {run.run_id} holds no plans; "
                         "no heat map.")
            continue
        seed = "" if pd.isna(run.seed) else f" seed {run.seed}"
        layer = list(plans)[-1]  # the file keeps the configured order, shallow to deep
        entry = _entry(
            DIAG_SECTION, f"{name}: transport plan at layer {layer} of the "
            f"{table.options.method_label('ot')} run{seed} at epochs {epochs[0]} and "
            f"{epochs[1]}; student neurons ordered by their final matched teacher neuron",
            diagnostics.plan_heatmaps({layer: plans[layer]}, epochs, f"{name}{seed}"),
            folder, f"diag_plan_{stem(column)}")
        return [entry], notes
    return [], notes or ["No final OT run: no transport-plan heat map."]


def plan_columns(table: ResultTable) -> list[Column]:
    """The table's columns, those whose student starts from scratch first (stable order)."""
    return sorted(table.columns, key=lambda c: SCENARIOS.get(c.scenario, {}).get(
        "starts_from_teacher", False))


def study_figures_for(runs: pd.DataFrame, storage: str | None, folder: Path
                      ) -> tuple[list[FigureEntry], list[str]]:
    """History and importances of every study the runs name, from the Optuna storage."""
    names = sorted(runs.study.dropna().astype(str).unique())
    if not names:
        return [], []
    if storage is None:
        return [], ["No Optuna storage given or found beside the tracking store: no "
                    "optimization history or importance plots (pass --storage URL)."]
    found, notes = studies.load_studies(storage, names)
    methods = runs.dropna(subset=["study", "method"]).groupby("study")["method"].first()
    entries = []
    for name, study in found.items():
        method = str(methods.get(name, ""))
        problem = studies.history_problem(study)
        if problem is not None:
            notes.append(f"Study {name!r}: no history or importance plot ({problem}).")
            continue
        entries.append(_entry(
            "Sweeps: optimization history", name,
            study_figures.history_figure(studies.trial_values(study), name, method), folder,
            f"history_{slug(name)}"))
        importances = studies.importances(study)
        if isinstance(importances, str):
            notes.append(f"Study {name!r}: no importance plot ({importances}).")
            continue
        entries.append(_entry(
            "Sweeps: hyper-parameter importances", name,
            study_figures.importance_figure(importances, name, method), folder,
            f"importance_{slug(name)}"))
    return entries, notes


def _facts(tracking_uri: str, experiment: str, storage: str | None, runs: pd.DataFrame,
           final: pd.DataFrame) -> list[tuple[str, str]]:
    started = runs.start_time.dropna()
    span = f"{started.min():%Y-%m-%d %H:%M} – {started.max():%Y-%m-%d %H:%M} UTC"
    return [("Experiment", experiment), ("Tracking URI", tracking_uri),
            ("Optuna storage", storage or "none"), ("Runs", str(len(runs))),
            ("Finished final runs", str(len(final))), ("Runs started", span)]


def _context_tables(runs: pd.DataFrame, final: pd.DataFrame,
                    opts: ReportOptions) -> list[tuple[str, pd.DataFrame]]:
    tables = [("Settings shared by every final run", settings.shared_settings(final)),
              ("Chosen hyper-parameters and per-cell settings",
               settings.per_cell_settings(final, opts)),
              ("Teachers (their own runs, scored on their source task)",
               settings.teachers(runs, opts)),
              ("Software and git commits (all runs)", settings.software(runs)),
              ("Runs per stage and status", settings.run_counts(runs))]
    failed = settings.failures(runs)
    if not failed.empty:
        tables.append(("Failed final runs (not in the table)", failed))
    return tables
