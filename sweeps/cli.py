"""``otbench sweep SUITE``: studies, final stage and report from one suite file.

Heavy imports (Optuna, torch, MLflow) happen in the handler, so registering the command
costs nothing to the other commands.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from otbench.errors import ConfigError

from .schema import bundled_suites

if TYPE_CHECKING:
    from otbench.benchmark.data import TaskSpec

    from .driver import StudyResult
    from .suite import StudySpec, Suite


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register ``sweep`` on the ``otbench`` command's subparsers."""
    help_text = "Optuna sweeps of a suite, then the final multi-seed stage and the report"
    parser = sub.add_parser("sweep", help=help_text, description=help_text)
    parser.set_defaults(handler=cmd_sweep)
    parser.add_argument("suite", help="a suite YAML file, or the name of a bundled suite "
                        f"({', '.join(bundled_suites())})")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes "
                        "sharing the studies (default 1)")
    parser.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://user@host/db "
                        "to share studies between machines (default: $OTBENCH_OPTUNA_STORAGE, "
                        "else SQLite under the results folder)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: "
                        "$MLFLOW_TRACKING_URI, else SQLite under the results folder)")
    parser.add_argument("--results-dir", help="where caches, stores and the report go")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dry-run", action="store_true", help="print the studies, their "
                        "search spaces and budgets, then exit (nothing trained or written)")
    parser.add_argument("--smoke", action="store_true", help="the whole pipeline in minutes: "
                        "one trial, one seed and one epoch per study on generated data in the "
                        "real formats, under RESULTS_DIR/smoke/SUITE (or --results-dir)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-trial "
                        "lines; the summary only (bars are off anyway when the output is not "
                        "a terminal)")


def cmd_sweep(args: argparse.Namespace) -> int:
    from otbench.benchmark.cli import progress_bars

    from .driver import abandon_parents, close_parents, collect, prepare, run_workers
    from .studies import quiet_optuna, storage_url_for
    from .suite import load_suite
    from .worker import WorkerJob

    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    settings = {key: value for key, value in {"results_dir": args.results_dir,
                                              "tracking_uri": args.tracking_uri,
                                              "device": args.device}.items()
                if value is not None}
    suite_ref = args.suite
    if args.smoke:
        if args.dry_run:
            raise ConfigError("--smoke runs the pipeline on generated data; drop --dry-run "
                              "(a dry run of the suite itself lists what --smoke would run)")
        from .smoke import prepare_smoke

        suite_ref, settings = prepare_smoke(args.suite, settings)
        print(f"smoke run of {args.suite!r}: {suite_ref}")
    suite = load_suite(suite_ref, settings)
    storage_url = storage_url_for(args.storage, suite.results_dir)
    if args.dry_run:
        print_plan(suite, storage_url)
        return 0
    quiet_optuna()
    parents: dict[str, str] = {}
    try:
        parents = prepare(suite, storage_url, progress=progress_bars(args.quiet))
        job = WorkerJob(suite_ref, settings, storage_url, parents, workers=args.workers,
                        progress=progress_bars(args.quiet) and args.workers == 1,
                        verbose=not args.quiet)
        failed_workers = run_workers(job)
    except KeyboardInterrupt:
        abandon_parents(suite, parents)
        print("otbench: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    results = collect(suite, storage_url)
    close_parents(suite, parents, results)
    print_results(results)
    report = write_report(suite, storage_url) if any(r.tests for r in results) else None
    if report is not None:
        print(f"report: {report}")
    return exit_code(results, failed_workers)


def print_plan(suite: Suite, storage_url: str) -> None:
    """The ``--dry-run`` listing: every study, its space and its budget."""
    from otbench.benchmark.tracking import tracking_uri_for

    from .space import describe
    from .studies import display_url

    budget, pruner = suite.budget, suite.pruner
    limits = [f"at most {suite.max_failures} failures"]
    if budget.timeout_s is not None:
        limits.append(f"{budget.timeout_s:g} s per study and worker")
    prune = ("no pruning" if pruner.kind == "none" else
             f"{pruner.kind} pruning after epoch {pruner.warmup_epochs} once "
             f"{pruner.startup_trials} trials finished")
    print(f"suite {suite.name!r}: {len(suite.studies)} studies, MLflow experiment "
          f"{suite.experiment!r}")
    print(f"budget: {budget.trials} trials per study ({', '.join(limits)}); {prune}; "
          f"final stage: best params × {suite.final.seeds} seeds, scored on test")
    print(f"final runs: {final_protocol(suite)}")
    print(f"storage: {display_url(storage_url)}")
    print(f"tracking: {display_url(tracking_uri_for(suite.tracking_uri, suite.results_dir))}")
    width = max(len(spec.name) for spec in suite.studies)
    for spec in suite.studies:
        trials = f"{spec.trials} trial{'s' if spec.trials > 1 else ''}"
        print(f"  {spec.name:<{width}}  {trials:>10}  {describe(spec.space)}")
        print(f"  {'':<{width}}  {'':>10}  {study_setup(spec)}")
    print("dry run: nothing was trained or written")


def final_protocol(suite: Suite) -> str:
    """How the final runs produce their test accuracy, with the refit's training size."""
    if suite.final.refit != "train+val":
        return ("trained on the training split as the search was (validation held out), "
                "test scored after the last epoch")
    sizes = sorted({refit_size(spec.plan.task) for spec in suite.studies})
    return (f"refit on train+val ({'; '.join(sizes)}) with the chosen hyper-parameters and "
            "the same epochs, test scored once after the last epoch")


def refit_size(task: TaskSpec) -> str:
    """What a refit trains on: the whole training pool when the task takes all of it."""
    from otbench.benchmark.data.sources import DATASETS

    total = DATASETS[task.dataset].train_images
    if task.per_class is None and task.classes is None and total is not None:
        return f"{task}: all {total} training images"
    if task.per_class is None:
        return f"{task}: all its training images"
    return f"{task}: {task.per_class} per class plus the validation images"


def study_setup(spec: StudySpec) -> str:
    """The study's optimizer and the layer pairs its method uses."""
    from otbench.benchmark.runner import method_pairs, pair_names
    from otbench.methods.catalog import LAYER_TEXT

    cfg = spec.plan.config
    train = cfg.train
    momentum = ("" if train.optimizer != "sgd" else
                f" momentum {train.momentum:g} ({'Nesterov' if train.nesterov else 'plain'})")
    optimizer = f"{train.optimizer} lr {train.lr:g}{momentum} weight decay {train.weight_decay:g}"
    pairs = method_pairs(spec.plan, pair_names(spec.plan))
    if not spec.plan.method.needs_layer_pairs:
        layers = "no layer pairs"
    else:
        chosen = "configured" if cfg.layers else LAYER_TEXT[spec.plan.method.layers]
        layers = f"layers ({chosen}): " + ", ".join(f"{t}→{s}" for t, s in pairs)
    return f"{optimizer}; {layers}"


def print_results(results: list[StudyResult]) -> None:
    from .final import summary

    width = max(len(r.name) for r in results)
    for r in results:
        best = "-" if r.counts.best is None else f"{r.counts.best:.4f}"
        print(f"{r.name:<{width}}  trials {r.counts.finished}/{r.budget} (pruned "
              f"{r.counts.pruned}, failed {r.counts.failed})  best val acc {best}  "
              f"{summary(r.tests)}")
    overheads = [seconds for r in results for seconds in r.overheads]
    if overheads:
        print(f"overhead per run (wall time outside the epoch loop: Optuna, MLflow, loading "
              f"and building): median {statistics.median(overheads):.2f} s, max "
              f"{max(overheads):.2f} s over {len(overheads)} runs")


def write_report(suite: Suite, storage_url: str) -> Path | None:
    """The report under ``<results_dir>/report/<experiment>`` (with Optuna plots from the
    sweep's storage), when the reports package provides it; returns ``report.html``'s path."""
    try:
        from otbench.reports import report_dir
        from otbench.reports import write_report as write
    except ImportError:
        return None
    from otbench.benchmark.tracking import tracking_uri_for

    from .studies import with_installed_driver

    return write(tracking_uri_for(suite.tracking_uri, suite.results_dir), suite.experiment,
                 report_dir(suite.results_dir, suite.experiment),
                 storage=with_installed_driver(storage_url), options=dict(suite.report))


def exit_code(results: list[StudyResult], failed_workers: int) -> int:
    """1 when a worker crashed or a study ended without a final result, else 0."""
    empty = [r.name for r in results if not r.tests]
    if failed_workers:
        print(f"otbench: {failed_workers} worker process(es) exited with an error",
              file=sys.stderr)
    if empty:
        print(f"otbench: {len(empty)} studies have no final result (every trial failed or "
              f"was pruned, or a final run failed): {', '.join(empty)}", file=sys.stderr)
    return 1 if failed_workers or empty else 0

