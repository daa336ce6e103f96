"""The results table: methods × (scenario, task) columns, mean ± std over seeds, best in
bold, second underlined, a mark where a method differs from the reference method (OT) after
Holm's correction; under it, each method's mean paired difference to the reference with its
95 % confidence interval, and per column the smallest difference the seeds could detect.

Statistics are computed once (:func:`summarize`) into a plain DataFrame — also written as
``summary.csv`` — and three renderers only lay them out, so Markdown, LaTeX and HTML can never
disagree on a number or a mark.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from . import statistics
from .options import TESTS, ReportOptions

METRIC_NAMES = {"test/acc": "Test accuracy", "val/acc_final": "Validation accuracy"}
MISSING = "—"
#: ``table.tex``'s label when the options set none (a report sets ``tab:<experiment>``).
DEFAULT_LATEX_LABEL = "tab:otbench-results"


class Column(NamedTuple):
    """One result column: a suite entry (``entry``, see :func:`runs_frame`) of a scenario on a
    task. Usually one entry per (scenario, task); several when, e.g., three teacher → student
    pairs are distilled on the same task."""

    scenario: str
    entry: str
    task: str


def in_column(runs: pd.DataFrame, column: Column) -> pd.Series:
    """Which runs belong to a result column."""
    return ((runs.scenario == column.scenario) & (runs.entry == column.entry)
            & (runs.task == column.task))


@dataclass(frozen=True)
class ResultTable:
    """Per-cell statistics plus the row and column order of the rendered table.

    ``cells`` has one row per (scenario, entry, task, method) with ``n, mean, std`` (in
    display units, e.g. %); against the reference: the seeds paired (``pairs``), the mean
    paired difference ``diff`` with its 95 % CI ``diff_low, diff_high``, ``p_value``, Holm's
    ``p_holm`` and ``significant``; the column's ``detectable`` difference; ``best``,
    ``second``. ``overhead`` is the regularizer's share of training time (%) per method, or
    None."""

    cells: pd.DataFrame
    columns: list[Column]
    methods: list[str]
    overhead: pd.Series | None
    options: ReportOptions
    #: How each column's accuracies were produced (the final runs' ``protocol`` tag).
    protocols: dict[Column, str] = field(default_factory=dict)

    def cell(self, column: Column, method: str) -> pd.Series | None:
        cells = self.cells
        hit = cells[(cells.scenario == column.scenario) & (cells.entry == column.entry)
                     & (cells.task == column.task) & (cells.method == method)]
        return None if hit.empty else hit.iloc[0]

    def label(self, column: Column) -> str:
        """The column's header under its scenario: the entry's configured name, else the
        task's, with the entry id added when another column of the scenario has that task."""
        if column.entry in self.options.task_names:
            return self.options.task_names[column.entry]
        label = self.options.task_label(column.task)
        twins = [c for c in self.columns
                 if (c.scenario, c.task) == (column.scenario, column.task)]
        return f"{label} ({column.entry})" if len(twins) > 1 else label

    def title(self, column: Column) -> str:
        """The column's name with its scenario, as figures and sentences head it."""
        return f"{self.options.scenario_label(column.scenario)} · {self.label(column)}"

    def detectable(self, column: Column) -> float:
        """The smallest paired difference the column's seeds could detect (NaN if none)."""
        values = self.cells.loc[(self.cells.scenario == column.scenario)
                                & (self.cells.entry == column.entry)
                                & (self.cells.task == column.task), "detectable"].dropna()
        return float(values.iloc[0]) if len(values) else float("nan")

    @property
    def compared(self) -> list[str]:
        """The methods compared with the reference, in row order."""
        return [m for m in self.methods if m != self.options.reference]

    def in_scenario(self, scenario: str) -> list[Column]:
        return [c for c in self.columns if c.scenario == scenario]

    @property
    def common_n(self) -> int | None:
        """The number of seeds when every cell has the same, else None (cells then show
        their own n)."""
        counts = set(self.cells.n)
        return counts.pop() if len(counts) == 1 else None

    @property
    def scenarios(self) -> list[tuple[str, int]]:
        """Scenarios in column order with how many columns each spans."""
        spans: list[tuple[str, int]] = []
        for column in self.columns:
            if spans and spans[-1][0] == column.scenario:
                spans[-1] = (column.scenario, spans[-1][1] + 1)
            else:
                spans.append((column.scenario, 1))
        return spans


def final_results(runs: pd.DataFrame, options: ReportOptions) -> pd.DataFrame:
    """Finished final-stage runs that logged the table's metric: the table's only input."""
    if options.metric not in runs.columns:
        return runs.iloc[0:0]
    keep = (runs.stage == "final") & (runs.status == "FINISHED") & runs[options.metric].notna()
    return runs[keep]


def summarize(final: pd.DataFrame, options: ReportOptions) -> ResultTable:
    """Aggregate final runs per column and method, compare each with the reference, rank.

    Ranking uses the means rounded as displayed, so two methods that print the same number
    are both bold (or both underlined) rather than one of them arbitrarily."""
    scaled = final.assign(value=final[options.metric].astype(float) * options.scale)
    frames = [_column_cells(Column(*key), column, options)
              for key, column in scaled.groupby(list(Column._fields), sort=False)]
    cells = _rank(pd.concat(frames, ignore_index=True), options.decimals)
    return ResultTable(cells, ordered_columns(cells, options),
                       options.order_methods(cells.method), _overhead(final, options), options,
                       _protocols(final))


def _protocols(final: pd.DataFrame) -> dict[Column, str]:
    """Each column's protocol tag(s); runs logged before the tag existed have none."""
    if "protocol" not in final:
        return {}
    return {Column(*key): "; or ".join(sorted(group.dropna().unique()))
            for key, group in final.groupby(list(Column._fields), sort=False)["protocol"]
            if group.notna().any()}


def protocol_note(table: ResultTable) -> str:
    """One sentence per distinct protocol, naming its columns when they differ."""
    shown = {c: table.protocols[c] for c in table.columns if c in table.protocols}
    distinct = sorted(set(shown.values()))
    if len(distinct) == 1:
        return f"Protocol (every column): {distinct[0]}."
    return " ".join(f"Protocol ({', '.join(table.label(c) for c in shown if shown[c] == p)}): "
                    f"{p}." for p in distinct)


CELL_FIELDS = ("n", "mean", "std", "pairs", "diff", "diff_low", "diff_high", "p_value",
               "p_holm", "significant", "detectable")


def _column_cells(key: Column, column: pd.DataFrame, options: ReportOptions) -> pd.DataFrame:
    """One column's cells: each method's mean ± std, and its paired comparison with the
    reference (differences per seed, their mean and CI, the test Holm-corrected over the
    column's methods). ``detectable`` is the column's: from the pooled spread of its
    methods' differences."""
    seeds = column["seed"] if "seed" in column else pd.Series(np.nan, index=column.index)
    by_seed = {method: group.groupby(seeds[group.index])["value"].mean()
               for method, group in column.groupby("method", sort=False)}
    reference = by_seed.get(options.reference)
    reference_values = column.loc[column.method == options.reference, "value"].to_numpy(float)
    rows = []
    for method in by_seed:
        values = column.loc[column.method == method, "value"].to_numpy(float)
        row = {**key._asdict(), "method": method, "n": len(values),
               "mean": float(values.mean()),
               "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan")}
        if reference is not None and method != options.reference:
            row.update(_comparison(by_seed[method], reference, values, reference_values,
                                   options.test))
        rows.append(row)
    cells = pd.DataFrame(rows).reindex(columns=[*Column._fields, "method", *CELL_FIELDS,
                                                "diff_sd"])
    cells["p_holm"] = statistics.holm(cells.p_value.to_numpy(float))
    cells["significant"] = cells.p_holm < options.alpha
    # A method whose every difference is the same (a copy of the reference) says nothing
    # about how two different methods' results spread, so it is not pooled.
    compared = cells[cells.diff_sd > 0]
    if not compared.empty:
        pooled = float(np.sqrt((compared.diff_sd ** 2).mean()))
        cells["detectable"] = statistics.detectable_difference(
            pooled, int(compared.pairs.min()), options.alpha)
    return cells.drop(columns="diff_sd")


def ordered_columns(cells: pd.DataFrame, options: ReportOptions) -> list[Column]:
    """Scenarios in the configured order; within one, tasks in order, then entries by name."""
    columns = {Column(*key) for key in cells[list(Column._fields)].itertuples(index=False)}
    scenarios = options.order_scenarios(c.scenario for c in columns)
    tasks = options.order_tasks(c.task for c in columns)
    return sorted(columns, key=lambda c: (scenarios.index(c.scenario), tasks.index(c.task),
                                          c.entry))


def _comparison(mine: pd.Series, reference: pd.Series, values: np.ndarray,
                reference_values: np.ndarray, test: str) -> dict[str, float]:
    """One method against the reference: paired by seed (``mine``, ``reference`` indexed by
    seed), except the unpaired ``mannwhitney`` test, which takes all ``values``."""
    paired = statistics.paired_values(mine, reference)
    differences = paired[0] - paired[1]
    diff = statistics.mean_difference(differences)
    tested = (values, reference_values) if test == "mannwhitney" else paired
    return {"pairs": len(differences), "diff": diff.mean, "diff_low": diff.low,
            "diff_high": diff.high,
            "diff_sd": float(differences.std(ddof=1)) if len(differences) > 1 else float("nan"),
            "p_value": statistics.p_value(*tested, test)}


def _rank(cells: pd.DataFrame, decimals: int) -> pd.DataFrame:
    shown = cells["mean"].round(decimals)
    best = pd.Series(False, index=cells.index)
    second = pd.Series(False, index=cells.index)
    for index in cells.groupby(list(Column._fields)).groups.values():
        levels = sorted(set(shown[index]), reverse=True)
        best[index] = shown[index] == levels[0]
        if len(levels) > 1:
            second[index] = shown[index] == levels[1]
    return cells.assign(best=best, second=second)


def _overhead(final: pd.DataFrame, options: ReportOptions) -> pd.Series | None:
    """Mean regularizer share of training time (%) per method over its final runs."""
    if not options.overhead or "time/overhead" not in final or final["time/overhead"].isna().all():
        return None
    return final.groupby("method")["time/overhead"].mean() * 100


# ---------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class Markup:
    """How one output format spells text, emphasis and the significance mark."""

    escape: Callable[[str], str]
    bold: Callable[[str], str]
    underline: Callable[[str], str]
    mark: Callable[[str], str]
    pm: str


MARKDOWN = Markup(escape=lambda s: s.replace("|", "\\|"), bold=lambda s: f"**{s}**",
                  underline=lambda s: f"<u>{s}</u>", mark=lambda m: m, pm=" ± ")
HTML = Markup(escape=html.escape, bold=lambda s: f"<b>{s}</b>", underline=lambda s: f"<u>{s}</u>",
              mark=lambda m: f"<sup>{html.escape(m)}</sup>", pm=" ± ")

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "—": "---", "–": "--", "±": r"$\pm$",
                  "×": r"$\times$", "−": "$-$", "α": r"$\alpha$"}
_LATEX_MARKS = {"†": r"$^{\dagger}$", "‡": r"$^{\ddagger}$", "*": r"$^{*}$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


LATEX = Markup(escape=latex_escape, bold=lambda s: rf"\textbf{{{s}}}",
               underline=lambda s: rf"\underline{{{s}}}",
               mark=lambda m: _LATEX_MARKS.get(m, rf"\textsuperscript{{{latex_escape(m)}}}"),
               pm=r" $\pm$ ")


def cell_text(table: ResultTable, column: Column, method: str, markup: Markup) -> str:
    """``mean ± std`` with emphasis and mark; the n only when cells differ in n."""
    cell = table.cell(column, method)
    if cell is None:
        return markup.escape(MISSING)
    digits = table.options.decimals
    text = f"{cell['mean']:.{digits}f}"
    if cell["n"] > 1:
        text += f"{markup.pm}{cell['std']:.{digits}f}"
    if table.common_n is None:
        text += f" (n={cell['n']})"
    if cell["best"]:
        text = markup.bold(text)
    elif cell["second"]:
        text = markup.underline(text)
    return text + (markup.mark(table.options.mark) if cell["significant"] else "")


def overhead_text(table: ResultTable, method: str, markup: Markup) -> str:
    assert table.overhead is not None
    value = table.overhead.get(method, float("nan"))
    return markup.escape(MISSING) if pd.isna(value) else f"{value:.1f}"


def note(table: ResultTable, markup: Markup) -> str:
    """What the numbers are, what bold/underline mean, and which test at which level."""
    opts = table.options
    unit = "%" if opts.scale == 100 else f"× {opts.scale:g}"
    seeds = (f"n = {table.common_n} seeds per cell" if table.common_n is not None
             else "n seeds given per cell")
    metric = METRIC_NAMES.get(opts.metric, opts.metric)
    sentences = [f"{metric} ({unit}), mean ± std (ddof = 1) over seeds, {seeds}."]
    reference = opts.method_label(opts.reference)
    if (table.cells.method == opts.reference).any():
        paired = ("unpaired" if opts.test == "mannwhitney"
                  else f"each seed paired with {reference}'s same seed")
        test = (f"{markup.mark(opts.mark)}: differs from {markup.escape(reference)} at level "
                f"{opts.alpha:g} after Holm's correction over the column's methods "
                f"({markup.escape(TESTS[opts.test])}, two-sided, {markup.escape(paired)}).")
    else:
        test = markup.escape(f"No significance marks: the reference method {reference} has "
                             "no final runs.")
    sentences.append(f"{MISSING}: no finished run.")
    if table.protocols:
        sentences.append(protocol_note(table))
    if table.overhead is not None:
        sentences.append("Reg. time: the regularizer's share of training time (%), mean over "
                         "the method's final runs.")
    emphasis = (f"{markup.bold('Bold')}: best, {markup.underline('underlined')}: second best "
                "per column (as rounded).")
    return " ".join([markup.escape(sentences[0]), emphasis, test,
                     *(markup.escape(s) for s in sentences[1:])])


def difference_note(table: ResultTable) -> str:
    """What the rows under the table are."""
    opts = table.options
    reference = opts.method_label(opts.reference)
    return (f"Difference to {reference}: the method's minus {reference}'s result on the same "
            "seed, mean over seeds with its 95 % confidence interval (t). Detectable: the "
            f"smallest true difference a two-sided paired t-test at level {opts.alpha:g} "
            "detects with power 0.8 given these seeds, from the spread of the column's paired "
            "differences (pooled over its methods).")


def difference_rows(table: ResultTable, markup: Markup) -> list[list[str]]:
    """Rows under the table: per compared method its mean paired difference to the reference
    [95 % CI] per column, then the column's detectable difference; empty without a
    reference."""
    opts = table.options
    if not (table.cells.method == opts.reference).any():
        return []
    digits = opts.decimals
    reference = opts.method_label(opts.reference)
    rows = []
    for method in table.compared:
        row = [markup.escape(f"{opts.method_label(method)} − {reference}")]
        for column in table.columns:
            cell = table.cell(column, method)
            if cell is None or pd.isna(cell["diff"]):
                row.append(markup.escape(MISSING))
            elif pd.isna(cell["diff_low"]):
                row.append(f"{cell['diff']:+.{digits}f}")
            else:
                low, high = cell["diff_low"], cell["diff_high"]
                row.append(markup.escape(f"{cell['diff']:+.{digits}f} [{low:+.{digits}f}, "
                                         f"{high:+.{digits}f}]"))
        rows.append(row)
    detectable = [table.detectable(c) for c in table.columns]
    rows.append([markup.escape("Detectable (α 0.05, power 0.8)" if opts.alpha == 0.05
                               else f"Detectable (α {opts.alpha:g}, power 0.8)"),
                 *(markup.escape(MISSING) if pd.isna(d) else f"{d:.{digits}f}"
                   for d in detectable)])
    return rows


def render_markdown(table: ResultTable) -> str:
    opts = table.options
    esc = MARKDOWN.escape
    head = ["Method", *(esc(f"{opts.scenario_label(c.scenario)}: {table.label(c)}")
                        for c in table.columns)]
    if table.overhead is not None:
        head.append("Reg. time (%)")
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join([":---", *[":---:"] * (len(head) - 1)]) + "|"]
    for method in table.methods:
        row = [esc(opts.method_label(method)),
               *(cell_text(table, c, method, MARKDOWN) for c in table.columns)]
        if table.overhead is not None:
            row.append(overhead_text(table, method, MARKDOWN))
        lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n\n" + note(table, MARKDOWN) + "\n"
    differences = difference_rows(table, MARKDOWN)
    if differences:
        head = ["Difference", *head[1:len(table.columns) + 1]]
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join([":---", *[":---:"] * (len(head) - 1)]) + "|",
                 *("| " + " | ".join(row) + " |" for row in differences)]
        text += "\n" + "\n".join(lines) + "\n\n" + esc(difference_note(table)) + "\n"
    return text


def render_latex(table: ResultTable) -> str:
    """A booktabs ``table`` float, scenarios as spanning headers; ``\\input`` it from a paper
    that loads ``booktabs``."""
    opts = table.options
    esc = LATEX.escape
    extra = table.overhead is not None
    spec = "l" + "c" * len(table.columns) + ("r" if extra else "")
    spans, rules, start = [], [], 2
    for scenario, width in table.scenarios:
        spans.append(rf"\multicolumn{{{width}}}{{c}}{{{esc(opts.scenario_label(scenario))}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
        start += width
    top = " & ".join(["", *spans, *([""] if extra else [])]) + r" \\"
    second = " & ".join(["Method", *(esc(table.label(c)) for c in table.columns),
                         *([r"Reg.\ time (\%)"] if extra else [])]) + r" \\"
    body = []
    for method in table.methods:
        row = [esc(opts.method_label(method)),
               *(cell_text(table, c, method, LATEX) for c in table.columns)]
        if extra:
            row.append(overhead_text(table, method, LATEX))
        body.append(" & ".join(row) + r" \\")
    differences = [" & ".join([*row, *([""] if extra else [])]) + r" \\"
                   for row in difference_rows(table, LATEX)]
    if differences:
        body += [r"\midrule", *differences]
    caption = note(table, LATEX) + (" " + esc(difference_note(table)) if differences else "")
    return "\n".join([
        "% Generated by `otbench report`; needs \\usepackage{booktabs} in the preamble.",
        r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{spec}}}", r"\toprule", top,
        " ".join(rules), second, r"\midrule", *body, r"\bottomrule", r"\end{tabular}",
        rf"\caption{{{caption}}}",
        rf"\label{{{table.options.latex_label or DEFAULT_LATEX_LABEL}}}", r"\end{table}",
        ""])


def render_html(table: ResultTable) -> str:
    """A ``<table>`` fragment (plus its note), styled by the page that includes it."""
    opts = table.options
    esc = HTML.escape
    extra = table.overhead is not None
    top = ['<th rowspan="2">Method</th>',
           *(f'<th colspan="{w}">{esc(opts.scenario_label(s))}</th>' for s, w in table.scenarios)]
    if extra:
        top.append('<th rowspan="2">Reg. time (%)</th>')
    second = [f"<th>{esc(table.label(c))}</th>" for c in table.columns]
    rows = []
    for method in table.methods:
        cells = [f'<th scope="row">{esc(opts.method_label(method))}</th>',
                 *(f"<td>{cell_text(table, c, method, HTML)}</td>" for c in table.columns)]
        if extra:
            cells.append(f"<td>{overhead_text(table, method, HTML)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    differences = [f'<tr><th scope="row">{row[0]}</th>'
                   + "".join(f"<td>{c}</td>" for c in row[1:]) + "</tr>"
                   for row in difference_rows(table, HTML)]
    notes = [note(table, HTML)] + ([esc(difference_note(table))] if differences else [])
    return "\n".join([
        '<table class="results">', "<thead>", "<tr>" + "".join(top) + "</tr>",
        "<tr>" + "".join(second) + "</tr>", "</thead>", "<tbody>", *rows, "</tbody>",
        *(['<tbody class="differences">', *differences, "</tbody>"] if differences else []),
        "</table>", *(f'<p class="note">{n}</p>' for n in notes), ""])
