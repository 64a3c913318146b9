"""CPU cores per RL role: ``rl.trainer.cpus`` and ``rl.servers.cpus``.

On GPU nodes the trainer and the inference servers hold different GPUs, so generating and training
overlap in time: that is what asynchronous RL is for. On a CPU-only machine the equivalent is giving each
role its own cores. A role with a core list is pinned to it with ``os.sched_setaffinity`` in its own
process (a server before it execs `lagoon serve`, so the whole server inherits it), and its torch thread
count matches its share of those cores, so no role's threads wait for a core another role holds.
Actors, sandboxes and the orchestrator stay unpinned: they mostly wait on the servers.

Core ids are the kernel's logical CPU numbers (``os.sched_getaffinity(0)`` lists the ones this process
may use); an empty list leaves a role where the operating system puts it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from lagoon.errors import check


def validate_cpus(cpus: Sequence[int], field: str = "cpus") -> None:
    """One-line `ConfigError`s for core ids that are repeated or that this process may not run on."""
    check(len(set(cpus)) == len(cpus), field, f"lists a core twice: {list(cpus)}")
    allowed = os.sched_getaffinity(0)
    unknown = sorted(set(cpus) - allowed)
    check(not unknown, field, f"core(s) {unknown} are not available here (this process may use "
                              f"{_ranges(sorted(allowed))})")


def _ranges(cores: list[int]) -> str:
    """``0-3,6`` for [0, 1, 2, 3, 6]."""
    parts, start = [], None
    for index, core in enumerate(cores):
        if start is None:
            start = core
        if index + 1 == len(cores) or cores[index + 1] != core + 1:
            parts.append(str(start) if start == core else f"{start}-{core}")
            start = None
    return ",".join(parts)


def pin_process(cpus: Sequence[int], threads: int | None = None) -> None:
    """Pin this process to `cpus` and set torch's thread count to `threads` (default: one per core).
    No-op for an empty list."""
    if not cpus:
        return
    os.sched_setaffinity(0, list(cpus))
    import torch

    torch.set_num_threads(max(1, threads or len(cpus)))


def pin_child(before: Callable[[], None], cpus: Sequence[int]) -> Callable[[], None]:
    """A ``preexec_fn`` for `subprocess.Popen`: `before`, then pin the child to `cpus` before it execs
    (affinity is inherited across exec; the child sets its own thread count from its command line)."""
    cores = list(cpus)

    def setup() -> None:
        before()
        if cores:
            os.sched_setaffinity(0, cores)

    return setup
