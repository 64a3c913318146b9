"""``lagoon train CONFIG --run-dir DIR [--set key=value ...]`` (single process, or every rank under torchrun)."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    from lagoon.cli import add_config_arguments

    train = subparsers.add_parser(
        "train", help="pretrain a Laguna model on a shard set (resumes from DIR/checkpoints)",
        description="Pretrain on a shard set. Single process, or under "
                    "`torchrun --nproc-per-node N -m lagoon train ...` for data parallelism (gloo on CPU, NCCL on GPU).")
    add_config_arguments(train)
    train.add_argument("--run-dir", required=True, metavar="DIR",
                       help="where metrics.jsonl, checkpoints/ and config.toml go; an existing run resumes")
    train.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from lagoon.config import load_config
    from lagoon.train.loop import run_training

    config = load_config(args.config, args.overrides)
    result = run_training(config, args.run_dir)
    if os.environ.get("RANK", "0") != "0":
        return 0
    bpb = "  ".join(f"{group} {value:.3f}" for group, value in sorted(result.eval_bpb.items()))
    state = "already finished" if result.already_finished else "finished"
    loss = "–" if result.loss is None else f"{result.loss:.4f}"
    print(f"{state} at step {result.step}: loss {loss}" + (f"; eval bits per byte: {bpb}" if bpb else "")
          + (f"; checkpoint {result.checkpoint}" if result.checkpoint else ""))
    return 0
