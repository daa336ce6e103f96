"""The ``otbench`` command line. Every deliberate error exits with code 2 and one message.

This module imports nothing heavy at its top, and building the parser imports none of the
subcommands' work: ``otbench --help`` answers at once, and a sweep worker process (which runs
the ``otbench`` script again to import it) starts without loading torch or MLflow twice.
"""

from __future__ import annotations

import argparse
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
        print(yaml.safe_dump(resolved, sort_keys=False), end="")
        return 0
    result = execute_run(cfg, progress=progress_bars(args.quiet))
    test = "" if result.test_acc is None else f"  test acc {result.test_acc:.4f}"
    print(f"run {result.run_id}: {cfg.scenario} {cfg.method} on {cfg.task}: "
          f"val acc {result.val_acc:.4f}{test}")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from .runner import plan_run
    from .teachers import get_teacher
    from .tracking import tracking_uri_for

    cfg = _resolved_config(args)
    plan = plan_run(cfg)
    teacher = get_teacher(plan.teacher_request, device=plan.device, data_dir=cfg.data_dir,
                          download=cfg.download, results_dir=cfg.results_dir,
                          tracking_uri=tracking_uri_for(cfg.tracking_uri, cfg.results_dir),
                          experiment=cfg.experiment, progress=progress_bars(args.quiet))
    print(f"teacher {cfg.teacher.model} on {plan.teacher_request.task}: {teacher.source}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from otbench.methods import get_method, method_names

    width = max(map(len, method_names())) + 2
    for name in method_names():
        cls = get_method(name)
        print(f"{name:{width}s}{cls.summary}")
        print(f"{'':{width}s}applies: {cls.applicability()}; reads: "
              f"{', '.join(sorted(cls.reads)) or 'nothing'}")
        for hp in cls.hyperparams:
            print(f"{'':{width}s}  {hp.describe()}" + (f"  — {hp.help}" if hp.help else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from otbench.reports.cli import add_command as add_report_command
    from otbench.sweeps.cli import add_command as add_sweep_command

    from .analyze import add_command as add_analyze_command
    from .perf import add_command as add_perf_command

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
    run = sub.choices["run"]
    run.add_argument("--print-config", action="store_true", help="print the resolved config "
                     "(with the method's parameters, defaults filled in) and exit")
    run.add_argument("--test", action="store_true", help="also score on the test split")
    add_analyze_command(sub)
    add_sweep_command(sub)
    add_perf_command(sub)
    for command in sub.choices.values():
        command.add_argument("--plugin", dest="plugins", action="append", default=[],
                             metavar="PATH_OR_MODULE", help="a .py file or module registering "
                             "extra methods (repeatable)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        load_plugins(args.plugins)
        return args.handler(args)
    except OtbenchError as err:
        print(f"otbench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
