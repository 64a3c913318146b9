"""The ``lagoon`` command: one entry point with a subcommand per stage of the stack.

Subcommand modules expose ``register(subparsers)``; handlers receive the parsed arguments and return an
exit code (or None for success). A user mistake exits non-zero with one line (`lagoon.errors`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from lagoon.errors import LagoonError

DESCRIPTION = """\
Train agentic coding models end to end: build a curated token corpus, choose its data mixture with
proxy models (AutoMixer), pretrain a Laguna-architecture Mixture-of-Experts model with Muon and
silent-data-corruption checks, export it for Hugging Face transformers, serve it, and improve it with
asynchronous agent RL in a sandbox. `lagoon demo configs/demo.toml --run-dir runs/demo` runs all of it
on one machine; each command below runs one stage and takes `--help`."""

EPILOG = "Every command that reads a TOML config takes --set section.key=value overrides; see README.md."

# Modules that contribute subcommands, in the order they appear in `lagoon --help`.
COMMAND_MODULES = [
    "lagoon.demo.commands",
    "lagoon.model.commands",
    "lagoon.data.commands",
    "lagoon.train.commands",
    "lagoon.parallel.commands",
    "lagoon.automix.commands",
    "lagoon.report.commands",
    "lagoon.infer.commands",
    "lagoon.rl.commands",
    "lagoon.agent.commands",
    "lagoon.launch",
]


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The CONFIG positional and repeated ``--set section.key=value`` overrides."""
    parser.add_argument("config", metavar="CONFIG", nargs=None if required else "?",
                        help="TOML run config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.num_hidden_layers=4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lagoon", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lagoon {importlib.import_module('lagoon').__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _record_for_torchrun(error: BaseException) -> None:
    """Under torchrun, also write the error into the rank's error file, where torchrun (and a scheduler
    reading the launcher's ``TORCHELASTIC_ERROR_FILE``) finds it with this rank's exit code."""
    from lagoon.processes import under_torchrun

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if under_torchrun() and path:
        # torchelastic's error-file format (its ErrorHandler.record_exception), with the one line a user
        # mistake deserves in place of a traceback.
        data = {"message": {"message": f"{type(error).__name__}: {error}",
                            "extraInfo": {"py_callstack": f"lagoon: error: {error}", "timestamp": str(int(time.time()))}}}
        try:
            Path(path).write_text(json.dumps(data))
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["launch"]:  # torchrun's options are parsed by torchrun's own parser
        from lagoon.launch import main as launch

        return launch(argv[1:])
    from lagoon.processes import exit_with_launcher

    exit_with_launcher()  # a rank whose torchrun died stops instead of training on alone
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except LagoonError as error:
        print(f"lagoon: error: {error}", file=sys.stderr, flush=True)
        _record_for_torchrun(error)
        return error.exit_code
    except KeyboardInterrupt:
        print("lagoon: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
