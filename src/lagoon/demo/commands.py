"""``lagoon demo CONFIG --run-dir DIR [--only STAGE ...]``."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from lagoon.cli import add_config_arguments
    from lagoon.demo.config import STAGES

    demo = subparsers.add_parser(
        "demo", help="run the whole pipeline end to end (data → AutoMixer → pretraining → export → RL → report)",
        description="The main job. Resumable stage by stage: rerun the same command to continue; finished "
                    "stages are skipped.")
    add_config_arguments(demo)
    demo.add_argument("--run-dir", default="runs/demo", metavar="DIR", help="where every stage writes (default runs/demo)")
    demo.add_argument("--only", nargs="+", choices=STAGES, metavar="STAGE",
                      help=f"run only these stages (in order; earlier ones must have finished): {', '.join(STAGES)}")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from lagoon.config import load_config
    from lagoon.demo.pipeline import run_pipeline

    config = load_config(args.config, args.overrides)
    run_pipeline(config, args.run_dir, only=args.only)
    return 0
