"""``lagoon report DIR [--out FILE]``."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    report = subparsers.add_parser("report", help="write an HTML report (plots, tables) of a run or a directory of runs")
    report.add_argument("run_dir", metavar="DIR", help="a run directory (with metrics.jsonl) or a directory of runs")
    report.add_argument("--out", default=None, help="where to write the page (default: DIR/report.html)")
    report.add_argument("--title", default=None, help="page title")
    report.add_argument("--include", nargs="+", default=None, metavar="GROUP",
                        help="only these settings of a directory of runs (a run NAME/seedK belongs to group NAME)")
    report.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard event files to DIR/tensorboard (tensorboard --logdir DIR/tensorboard)")
    report.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    from lagoon.report import build_report

    path = build_report(args.run_dir, args.out, args.title, args.include)
    print(f"wrote {path}")
    if args.tensorboard:
        from lagoon.report.tensorboard import export_tensorboard

        files = export_tensorboard(args.run_dir, include=args.include)
        print(f"wrote {len(files)} TensorBoard event file(s) under {files[0].parents[0 if len(files) == 1 else 1]}")
    return 0
