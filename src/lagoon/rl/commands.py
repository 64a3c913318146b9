"""``lagoon rl``: the whole asynchronous RL loop on one machine, or one role of it.

    lagoon rl CONFIG --run-dir DIR                      servers + trainer + actors (+ SFT warm-up, evaluation)
    lagoon rl trainer CONFIG --run-dir DIR [--server URL ...]
    lagoon rl actor CONFIG --run-dir DIR --index I [--server URL ...]
    lagoon rl serve CONFIG --run-dir DIR --index I      one inference server as `lagoon rl` starts it
    lagoon rl eval CONFIG --run-dir DIR --checkpoint CKPT   held-out reward of a checkpoint
    lagoon rl sft CONFIG --run-dir DIR                  the supervised warm-up alone (under torchrun: sharded)

Roles started alone find each other through the run directory's ``servers.json`` (written by
``lagoon rl``), ``[rl.servers] urls``, or ``--server``; the trajectory table comes from ``[rl.table]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lagoon.errors import LagoonError

ROLES = ("trainer", "actor", "serve", "eval", "sft")
SERVERS_FILE = "servers.json"


def register(subparsers) -> None:
    rl = subparsers.add_parser("rl", help="asynchronous agent RL: all roles on this machine, or one role "
                                          "(trainer | actor | serve | eval | sft)")
    rl.add_argument("target", nargs="+", metavar="[ROLE] CONFIG",
                    help="a TOML run config, optionally preceded by a role: trainer, actor, serve, eval, sft")
    rl.add_argument("--run-dir", required=True, help="the run directory (shared by every role of one run)")
    rl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set rl.total_steps=10 (repeatable)")
    rl.add_argument("--server", dest="servers", action="append", default=[], metavar="URL",
                    help="an inference server URL (repeatable; default: the run's servers.json or [rl.servers] urls)")
    rl.add_argument("--index", type=int, default=0, help="actor or server index (actor/serve roles)")
    rl.add_argument("--checkpoint", default=None, help="checkpoint to evaluate (eval role)")
    rl.set_defaults(handler=run_command)


def _split_target(target: list[str]) -> tuple[str | None, str]:
    if len(target) == 1:
        if target[0] in ROLES:
            raise LagoonError(f"lagoon rl {target[0]} needs a CONFIG")
        return None, target[0]
    if len(target) == 2 and target[0] in ROLES:
        return target[0], target[1]
    raise LagoonError(f"expected [ROLE] CONFIG with ROLE one of {', '.join(ROLES)}; got {' '.join(target)}")


def resolve_servers(args_servers: list[str], config, run_dir: Path) -> list[str]:
    """Explicit --server URLs, else [rl.servers] urls, else the run's servers.json, else none."""
    if args_servers:
        return list(args_servers)
    if config.rl.servers.urls:
        return list(config.rl.servers.urls)
    path = Path(run_dir) / SERVERS_FILE
    if path.is_file():
        return list(json.loads(path.read_text())["urls"])
    return []


def run_command(args: argparse.Namespace) -> int:
    from lagoon.config import load_config

    role, config_path = _split_target(args.target)
    config = load_config(config_path, args.overrides)
    run_dir = Path(args.run_dir)
    if role is None:
        from lagoon.rl import run

        result = run(config, run_dir)
        print(json.dumps(result, indent=2))
        return 0
    if role == "trainer":
        from lagoon.rl.trainer import Trainer

        run_dir.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(config, run_dir, resolve_servers(args.servers, config, run_dir))
        try:
            version = trainer.run()
        finally:
            trainer.close()
        print(f"trainer: stopped at version {version}")
        return 0
    if role == "actor":
        from lagoon.rl.actor import run_actor

        servers = resolve_servers(args.servers, config, run_dir)
        if not servers:
            raise LagoonError("the actor needs an inference server: pass --server URL or set [rl.servers] urls")
        run_actor(config, run_dir, args.index, servers)
        return 0
    if role == "serve":
        if config.rl.servers.engine == "vllm":
            from lagoon.rl.vllm_servers import serve_one
        else:
            from lagoon.rl.servers import serve_one

        return serve_one(config, run_dir, args.index)
    if role == "eval":
        from lagoon.rl.evaluate import evaluate_checkpoint

        if not args.checkpoint:
            raise LagoonError("lagoon rl eval needs --checkpoint CKPT")
        print(json.dumps(evaluate_checkpoint(config, Path(args.checkpoint)), indent=2))
        return 0
    if role == "sft":
        from lagoon.rl.sft import warmup

        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"sft: {warmup(config, run_dir)}")
        return 0
    raise AssertionError(role)
