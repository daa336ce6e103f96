"""The ``otbench`` command line. Every deliberate error exits with code 2 and one message.

This module imports nothing heavy at its top, and building the parser imports none of the
subcommands' work: ``otbench --help`` answers at once, and a sweep worker process (which runs
the ``otbench`` script again to import it) starts without loading torch or MLflow twice.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

import yaml

from otbench import __version__
from otbench.errors import OtbenchError

from .plugins import load_plugins


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML run config (defaults apply without one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. train.lr=0.1")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (same as --set device=…)")
    parser.add_argument("--results-dir", help="where caches and the MLflow store live")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: "
                        "$MLFLOW_TRACKING_URI, else SQLite under "
                        "the results folder)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (off anyway "
                        "when the output is not a terminal)")


def progress_bars(quiet: bool) -> bool:
    """Progress bars only when both outputs are terminals: in a log file their ``\\r``
    frames are noise, and a finished run prints its one line anyway."""
    return not quiet and sys.stdout.isatty() and sys.stderr.isatty()


def _resolved_config(args: argparse.Namespace):
    from .config import resolve_run_config

    shortcuts = {"device": args.device, "results_dir": args.results_dir,
                 "tracking_uri": args.tracking_uri}
    overrides = [*args.overrides, *(f"{k}={v}" for k, v in shortcuts.items() if v is not None)]
    return resolve_run_config(args.config, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import execute_run, plan_run

    cfg = _resolved_config(args)
    if args.test:
        cfg.evaluate_test = True
    plan = plan_run(cfg)  # validate names and pairings even when only printing
    if args.print_config:
        resolved = {**cfg.model_dump(), "params": plan.params}  # the method's defaults filled in
        resolved["student"] = plan.student_spec.name  # in transfer, the teacher's architecture
        print(yaml.safe_dump(resolved, sort_keys=False), end="")
        return 0
    result = execute_run(cfg, progress=progress_bars(args.quiet))
    test = "" if result.test_acc is None else f"  test acc {result.test_acc:.4f}"
    val = "no validation (refit on train+val)" if cfg.refit else f"val acc {result.val_acc:.4f}"
    print(f"run {result.run_id}: {cfg.scenario} {cfg.method} on {cfg.task}: {val}{test}")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from .runner import check_results_dir, resolve_device, teacher_request
    from .teachers import get_teacher
    from .tracking import tracking_uri_for

    cfg = _resolved_config(args)
    request = teacher_request(cfg)
    device = resolve_device(cfg.device)
    check_results_dir(cfg.results_dir)
    teacher = get_teacher(request, device=device, data_dir=cfg.data_dir,
                          download=cfg.download, results_dir=cfg.results_dir,
                          tracking_uri=tracking_uri_for(cfg.tracking_uri, cfg.results_dir),
                          experiment=cfg.experiment, progress=progress_bars(args.quiet))
    print(f"teacher {cfg.teacher.model} on {request.task}: {teacher.source}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from otbench.methods import get_method, method_names
    from otbench.methods.catalog import describe

    if args.check:
        return check_methods(args.names)
    if args.names:
        for name in args.names:
            print("\n".join(describe(get_method(name))))
        return 0
    width = max(map(len, method_names())) + 2
    for name in method_names():
        cls = get_method(name)
        print(f"{name:{width}s}{cls.summary}")
        print(f"{'':{width}s}applies: {cls.applicability()}; reads: "
              f"{', '.join(sorted(cls.reads)) or 'nothing'}")
        for hp in cls.hyperparams:
            print(f"{'':{width}s}  {hp.describe()}" + (f"  — {hp.help}" if hp.help else ""))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import cmd_analyze as analyze

    return analyze(args)


def _add_analyze_command(sub: argparse._SubParsersAction) -> None:
    help_text = "OT distance, CKA and matching between two trained models"
    parser = sub.add_parser("analyze", help=help_text, description=help_text)
    parser.add_argument("--teacher", required=True, help="teacher .pt cache file, or the id "
                        "of a run that used it (teacher, student or sweep study run)")
    parser.add_argument("--student", required=True, help="run id (or a teacher .pt file)")
    parser.add_argument("--task", help="task of the probe batch (default: the student's)")
    parser.add_argument("--layers", nargs="+", metavar="T:S", help="layer pairs "
                        "(default: stages paired by depth)")
    parser.add_argument("--probe-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--log-to", metavar="RUN_ID", help="also log the values to this run")
    parser.set_defaults(handler=cmd_analyze)


def check_methods(names: Sequence[str]) -> int:
    """``otbench methods --check [NAME...]``: the named methods, else those that plugins
    registered, else every built-in one; exit status 1 when one fails."""
    from otbench.methods import get_method, method_names

    from .method_check import check_all

    classes = [get_method(name) for name in names] or [
        get_method(n) for n in method_names()
        if not get_method(n).__module__.startswith("otbench.methods.")]
    classes = classes or [get_method(n) for n in method_names()]
    return 0 if check_all(classes) else 1


def build_parser() -> argparse.ArgumentParser:
    """Every command's arguments; no command's work is imported here."""
    from otbench.benchmarks.cli import add_command as add_perf_command
    from otbench.reports.cli import add_command as add_report_command
    from otbench.sweeps.cli import add_command as add_sweep_command

    parser = argparse.ArgumentParser(prog="otbench", description="Representation-transfer "
                                     "benchmark centred on optimal transport.")
    parser.add_argument("--version", action="version", version=f"otbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
        "run": (cmd_run, "one training run of a student under one method"),
        "teacher": (cmd_teacher, "train (or load from the cache) the teacher of a config"),
        "methods": (cmd_methods, "list the registered methods, their settings and scope"),
    }
    for name, (handler, help_text) in commands.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        if name in ("run", "teacher"):
            _add_config_args(command)
    add_report_command(sub)
    methods = sub.choices["methods"]
    methods.add_argument("names", nargs="*", metavar="NAME", help="describe these methods, "
                         "with where each default comes from (with --check: check them)")
    methods.add_argument("--check", action="store_true", help="run the interface, gradient "
                         "and determinism checks the built-in methods pass: on the named "
                         "methods, else on those a --plugin registers, else on all")
    run = sub.choices["run"]
    run.add_argument("--print-config", action="store_true", help="print the resolved config "
                     "(with the method's parameters, defaults filled in) and exit")
    run.add_argument("--test", action="store_true", help="also score on the test split")
    _add_analyze_command(sub)
    add_sweep_command(sub)
    add_perf_command(sub)
    for command in sub.choices.values():
        command.add_argument("--plugin", dest="plugins", action="append", default=[],
                             metavar="PATH_OR_MODULE", help="a .py file or module registering "
                             "extra methods (repeatable)")
    return parser


class CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a message comes, not the stream
    it was created with (a caller that swaps stderr, as pytest's capture does, may close that
    one)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def show_notes() -> None:
    """otbench's own INFO messages (e.g. the image size a task was given) on stderr."""
    logger = logging.getLogger("otbench")
    if not logger.handlers:
        handler = CurrentStderr()
        handler.setFormatter(logging.Formatter("otbench: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_notes()
    try:
        load_plugins(args.plugins)
        return args.handler(args)
    except OtbenchError as err:
        print(f"otbench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
