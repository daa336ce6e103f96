"""``otbench report``: registered on the main parser by :func:`add_command`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import ReportError
from .options import FORMATS, ReportOptions, report_dir

DEFAULT_RESULTS_DIR = "results"


def add_command(subparsers: argparse._SubParsersAction) -> None:
    help_text = "tables, figures and report.html from a suite's MLflow runs"
    parser = subparsers.add_parser("report", help=help_text, description=help_text)
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR,
                        help="where the MLflow store lives (default: %(default)s)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: "
                        "$MLFLOW_TRACKING_URI, else SQLite under "
                        "the results folder)")
    parser.add_argument("--experiment", help="experiment (suite) name; default: the only "
                        "one in the store")
    parser.add_argument("--out", help="report folder (default: RESULTS_DIR/report/EXPERIMENT, "
                        "one per suite)")
    parser.add_argument("--storage", help="Optuna storage URL for sweep plots (default: "
                        "$OTBENCH_OPTUNA_STORAGE, else optuna.db beside a SQLite tracking "
                        "store, when present)")
    parser.add_argument("--format", default=",".join(FORMATS),
                        help="table files to write, comma-separated (default: %(default)s)")
    parser.add_argument("--options", help="YAML file of report options: display names, "
                        "row/column order, test (paired-t|wilcoxon|mannwhitney), alpha...")
    parser.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from otbench.benchmark.tracking import tracking_uri_for

    from .report import write_report

    uri = tracking_uri_for(args.tracking_uri, args.results_dir)
    experiment = args.experiment or only_experiment(uri)
    out = Path(args.out) if args.out else report_dir(args.results_dir, experiment)
    options = ReportOptions.from_yaml(args.options) if args.options else None
    page = write_report(uri, experiment, out, storage=args.storage, formats=args.format,
                        options=options)
    print(f"report: {page}")
    return 0


def only_experiment(tracking_uri: str) -> str:
    """The store's one experiment (MLflow's empty 'Default' aside); several need a name."""
    from .collect import experiment_names, open_client

    names = [n for n in experiment_names(open_client(tracking_uri)) if n != "Default"]
    if len(names) == 1:
        return names[0]
    listing = ", ".join(repr(n) for n in names) or "none"
    raise ReportError(f"pass --experiment NAME: the store at {tracking_uri} holds "
                      f"{len(names)} experiments ({listing})")
