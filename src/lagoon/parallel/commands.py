"""``lagoon plan CONFIG --gpus N --gpu-memory-gb G [--role pretrain|rl]``: per-rank memory before booking GPUs."""

from __future__ import annotations

import argparse

from lagoon.errors import LagoonError


def register(subparsers) -> None:
    from lagoon.cli import add_config_arguments

    plan = subparsers.add_parser("plan", help="per-rank memory of a training job (parameters, gradients, optimizer "
                                              "state, activations) and the largest micro-batch that fits")
    add_config_arguments(plan)
    plan.add_argument("--gpus", type=int, required=True, help="GPUs of the job (trainer ranks, and servers for rl)")
    plan.add_argument("--gpu-memory-gb", type=float, required=True, help="memory of one GPU in GiB")
    plan.add_argument("--role", choices=("pretrain", "rl"), default="pretrain",
                      help="pretrain: lagoon train on every GPU; rl: the RL trainer plus inference servers")
    plan.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from lagoon.config import load_config
    from lagoon.parallel.plan import plan, render

    config = load_config(args.config, args.overrides)
    try:
        result = plan(config, args.gpus, args.gpu_memory_gb, args.role)
    except ValueError as error:
        raise LagoonError(str(error)) from None
    print(render(result))
    return 0
