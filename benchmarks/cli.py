"""``otbench perf``: registered on the main parser by :func:`add_command`; the measuring code
(:mod:`.perf`, with torch behind it) is imported when the command runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from otbench.errors import ConfigError


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register ``perf`` on the ``otbench`` command's subparsers."""
    help_text = ("micro-benchmarks: OT per layer, step cost of each method, data path, "
                 "representation diagnostics, OT at ResNet-50's widths")
    parser = sub.add_parser("perf", help=help_text, description=help_text)
    parser.set_defaults(handler=cmd_perf)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--json", type=Path, default=Path("results/perf.json"),
                        help="where to write the results (default results/perf.json)")
    parser.add_argument("--repeats", type=int, help="timed samples per variant "
                        "(default 7, 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small widths, the digits pair "
                        "only and fewer repeats: a smoke run")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: "
                        "torch's); 1 keeps timings sane on a machine shared with other jobs")
    parser.add_argument("--data-dir", default="data", help="dataset folder (digits ships "
                        "with scikit-learn)")


def cmd_perf(args: argparse.Namespace) -> int:
    import torch

    from .perf import PerfOptions, format_report, run_perf

    opts = PerfOptions.build(args.device, args.repeats, args.quick, args.data_dir)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    result = run_perf(opts)
    print(format_report(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0
