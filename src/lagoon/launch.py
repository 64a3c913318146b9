"""``lagoon launch [TORCHRUN OPTIONS] COMMAND [ARGS ...]``: torchrun that exits with the ranks' own exit code.

    lagoon launch --standalone --nproc-per-node 3 train configs/sdc_drill.toml --run-dir runs/sdc-drill
    lagoon launch --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0:29500 \\
        --rdzv-id pretrain train configs/scale/cluster.toml --run-dir /shared/lagoon/pretrain

It takes torchrun's options unchanged (it runs torchrun's own agent, `torch.distributed.run`, in this
process) and starts ``python -m lagoon COMMAND ARGS`` on every rank. torchrun itself exits 1 whenever a
rank fails, whatever the rank's exit code, so a scheduler cannot tell an SDC verdict (91: exclude the
node) from a crash. `lagoon launch` exits with the code of the first rank that failed (a rank that exited
with a code of its own is preferred over ranks the agent stopped afterwards), after one line naming it;
a launcher stopped by a signal exits 128 + the signal's number, having stopped its ranks.

Under plain torchrun the same code is still recorded: every lagoon rank writes its error into torchrun's
per-rank error file (``TORCHELASTIC_ERROR_FILE``), and torchrun copies the first failure, with
``errorCode`` set to the rank's exit code, into the error file a scheduler names for the launcher by
setting ``TORCHELASTIC_ERROR_FILE`` in torchrun's environment.
"""

from __future__ import annotations

import sys

USAGE = "lagoon launch [TORCHRUN OPTIONS] COMMAND [ARGS ...]   (e.g. --standalone --nproc-per-node 2 train CONFIG --run-dir DIR)"


class _UsageError(Exception):
    pass


def register(subparsers) -> None:
    # Parsed by `main` below (torchrun's own parser); registered here so that `lagoon --help` lists it.
    subparsers.add_parser("launch", help="torchrun that exits with the ranks' own exit code (e.g. 91 for an SDC "
                                         "verdict): lagoon launch [TORCHRUN OPTIONS] COMMAND [ARGS]",
                          add_help=False)


def _exit_code(failure) -> int:
    code = int(failure.exitcode)
    return code if code >= 0 else 128 - code   # killed by signal N: the shell's 128 + N


def _first_meaningful(error) -> tuple[int, object]:
    """The failure to report: the earliest rank that exited with a code of its own (>0), else the earliest."""
    failures = sorted(error.failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    for rank, failure in failures:
        if failure.exitcode > 0:
            return rank, failure
    return failures[0]


def _message(failure) -> str:
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    text = str(message or "").strip().splitlines()
    if not text or text[0].startswith("To enable traceback"):
        return ""
    kind, _, rest = text[0].partition(": ")   # "SDCError: silent data corruption ..."
    return (rest if rest and kind.isidentifier() else text[0])[:300]


def main(argv: list[str]) -> int:
    if not argv:
        print(f"lagoon: error: nothing to launch; usage: {USAGE}", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        examples, what = __doc__.split("\n\n")[1:3]
        print(f"usage: {USAGE}\n\n{examples}\n\n{what}\n\nTorchrun's options: torchrun --help.")
        return 0
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    parser = get_args_parser()

    def refuse(message: str):
        raise _UsageError(message)

    parser.error = refuse  # one line instead of torchrun's page of usage
    try:
        args = parser.parse_args(["--module", *argv])
    except _UsageError as error:
        problem = "no lagoon COMMAND to run" if "training_script" in str(error) else str(error)
        print(f"lagoon: error: launch: {problem}; usage: {USAGE}", file=sys.stderr)
        return 2
    args.training_script_args = [args.training_script, *args.training_script_args]
    args.training_script = "lagoon"
    try:
        run(args)
    except ChildFailedError as error:
        rank, failure = _first_meaningful(error)
        code = _exit_code(failure)
        detail = _message(failure)
        print(f"lagoon: error: rank {rank} exited with code {code}" + (f": {detail}" if detail else ""),
              file=sys.stderr, flush=True)
        return code
    except SignalException as error:
        print(f"lagoon: launch stopped by signal {int(error.sigval)}; its ranks were stopped", file=sys.stderr)
        return 128 + int(error.sigval)
    return 0
