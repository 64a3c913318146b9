"""Timing helpers for the inference benchmarks: wall and CPU clocks side by side.

The development machine is shared, so wall-clock rates swing with other people's load. CPU time of
this process (or of a server process) with one torch thread is what the code itself costs; the
benchmarks report it next to wall time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def interleaved_clocks(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
                       ) -> dict[str, dict[str, list[float]]]:
    """Run alternatives round-robin (the order reversing every other round, after `warmup` untimed calls
    of each); per name, the wall and process-CPU seconds of each round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: {"wall": [], "cpu": []} for name in fns}
    names = list(fns)
    for round_index in range(rounds):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            fn = fns[name]
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return times


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
