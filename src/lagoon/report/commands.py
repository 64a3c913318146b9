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
    report.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    from lagoon.report import build_report

    path = build_report(args.run_dir, args.out, args.title, args.include)
    print(f"wrote {path}")
    return 0
