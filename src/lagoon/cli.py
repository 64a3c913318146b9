"""The ``lagoon`` command. Each area registers its own subcommands; user mistakes exit non-zero with one line.

Subcommand modules expose ``register(subparsers)``; handlers receive the parsed arguments and return an
exit code (or None for success).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lagoon.errors import LagoonError

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
]


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The CONFIG positional and repeated ``--set section.key=value`` overrides."""
    parser.add_argument("config", metavar="CONFIG", nargs=None if required else "?",
                        help="TOML run config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.num_hidden_layers=4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lagoon", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"lagoon {importlib.import_module('lagoon').__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except LagoonError as error:
        print(f"lagoon: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("lagoon: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
