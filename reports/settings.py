"""What a reader needs to trust and reproduce the numbers: the suite's settings, the chosen
hyper-parameters, the software versions and git commits, the runs per stage and status —
all rebuilt from the runs' params and tags.
"""

from __future__ import annotations

import math

import pandas as pd

from .collect import CONFIG_PREFIX, HPARAM_PREFIX
from .options import ReportOptions
from .tables import Column, ordered_columns

#: Config params that repeat a run's identity (its tags) or its bookkeeping, not a setting;
#: ``params`` is the empty mapping of a method without hyper-parameters.
_NOT_SETTINGS = {*(CONFIG_PREFIX + t for t in ("scenario", "task", "method", "seed",
                                              "results_dir", "tracking_uri", "experiment",
                                              "params", "tags"))}
_NOT_SETTINGS_PREFIXES = (CONFIG_PREFIX + "tags.",)


#: Significant digits of a float setting as shown (a searched 0.8870568443732516 is 0.8871).
DIGITS = 4


def _text(value: object) -> str:
    """A setting as shown; missing (None, NaN, pandas' NA) shows as nothing, a float with
    :data:`DIGITS` significant digits."""
    missing = value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
    if missing:
        return ""
    return str(float(f"{value:.{DIGITS}g}")) if isinstance(value, float) else str(value)


def _setting_columns(final: pd.DataFrame) -> list[str]:
    return [c for c in final.columns if c.startswith(CONFIG_PREFIX) and c not in _NOT_SETTINGS
            and not c.startswith(_NOT_SETTINGS_PREFIXES)]


def shared_settings(final: pd.DataFrame) -> pd.DataFrame:
    """Settings with one value over every final run: the suite's common protocol."""
    rows = []
    for column in _setting_columns(final):
        values = {_text(v) for v in final[column]}
        if len(values) == 1:
            rows.append({"setting": column.removeprefix(CONFIG_PREFIX), "value": values.pop()})
    return pd.DataFrame(rows, columns=["setting", "value"])


def per_cell_settings(final: pd.DataFrame, options: ReportOptions) -> pd.DataFrame:
    """Per (scenario, entry, task, method), in table order: the chosen hyper-parameters and the
    settings that vary between cells (student, teacher...); values differing over seeds are
    all listed."""
    varying = [c for c in _setting_columns(final) if final[c].map(_text).nunique() > 1]
    hparams = sorted(c for c in final.columns if c.startswith(HPARAM_PREFIX))
    table_order = ordered_columns(final, options)
    methods = options.order_methods(final.method.unique())
    groups = sorted(final.groupby([*Column._fields, "method"]),
                    key=lambda item: (table_order.index(Column(*item[0][:3])),
                                      methods.index(item[0][3])))
    rows = []
    for (scenario, entry, task, method), group in groups:
        row = {"scenario": options.scenario_label(scenario), "entry": entry,
               "task": options.task_label(task), "method": options.method_label(method)}
        for column in [*hparams, *varying]:
            values = sorted({_text(v) for v in group[column]} - {""})
            row[column.removeprefix(CONFIG_PREFIX)] = ", ".join(values)
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.loc[:, (frame != "").any(axis=0)]  # drop columns empty in every row


def teachers(runs: pd.DataFrame, options: ReportOptions) -> pd.DataFrame:
    """Each teacher trained for this experiment: model, source task and its accuracies (%),
    the ceiling a distilled student is read against."""
    columns = ["model", "task", "val. accuracy (%)", "test accuracy (%)"]
    if "stage" not in runs:
        return pd.DataFrame(columns=columns)
    done = runs[(runs.stage == "teacher") & (runs.status == "FINISHED")]
    rows = []
    for _, run in done.sort_values("task").iterrows():
        rows.append({"model": _text(run.get("model")),
                     "task": options.task_label(str(run.task)),
                     "val. accuracy (%)": _percent(run.get("val/acc_final"), options),
                     "test accuracy (%)": _percent(run.get("test/acc"), options)})
    return pd.DataFrame(rows, columns=columns)


def _percent(value: object, options: ReportOptions) -> str:
    if value is None or pd.isna(value):
        return ""
    return f"{float(value) * 100:.{options.decimals}f}"


def software(runs: pd.DataFrame) -> pd.DataFrame:
    """Each version tag and the git commit with every value seen and its number of runs:
    more than one value means the runs were not made with the same software."""
    columns = ["git_commit", *sorted(c for c in runs.columns if c.startswith("version."))]
    rows = []
    for column in columns:
        counts = runs[column].dropna().astype(str).value_counts()
        rows.append({"software": column.removeprefix("version."),
                     "values (runs)": "; ".join(f"{v} ({n})" for v, n in counts.items()),
                     "consistent": "yes" if len(counts) <= 1 else "NO"})
    return pd.DataFrame(rows, columns=["software", "values (runs)", "consistent"])


def run_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs per stage and status (failed and killed runs are part of an honest report)."""
    counts = runs.fillna({"stage": "?"}).groupby(["stage", "status"]).size()
    return counts.unstack(fill_value=0).rename_axis(columns=None).reset_index()


def failures(runs: pd.DataFrame) -> pd.DataFrame:
    """Failed final runs with their reason: missing from the table, so said here."""
    failed = runs[(runs.stage == "final") & (runs.status == "FAILED")]
    columns = ["scenario", "entry", "task", "method", "seed", "failure_reason"]
    return failed[columns].reset_index(drop=True)
