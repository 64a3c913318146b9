"""Sandbox start latency: a full `Sandbox.run(["true"])` against running `true` without any sandbox.

Goal: p50 ≤ 20 ms (Docker `run` is ~200 ms, hosted sandboxes ~400 ms). Each round times, interleaved so
machine noise hits them alike: the unsandboxed baseline, the complete lagoon sandbox (namespaces, mounts,
capability drop, seccomp filter, as root the drop to an unprivileged user, rlimits, cgroups where available,
output files, truncation), the same without the seccomp filter (the filter's cost), and the bare bubblewrap
command line alone.

    .venv/bin/python -m benchmarks.sandbox_latency [--rounds 300] [--realtime]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time

from benchmarks.common import record
from lagoon.agent.cgroups import realtime_blocks_cpu
from lagoon.agent.config import SandboxConfig
from lagoon.agent.sandbox import Sandbox


def cpu_seconds() -> float:
    """CPU time of this process and of every child it has waited for (bwrap, the sandboxed command, ...)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--dry-run", action="store_true", help="print instead of appending to RESULTS.md")
    parser.add_argument("--realtime", action="store_true",
                        help="run at real-time priority (SCHED_FIFO 10, needs root): on a shared machine, measures "
                             "the sandbox rather than the wait for a core")
    args = parser.parse_args()
    load_at_start = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    if args.realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))  # children (bwrap, the sandbox) inherit it
    with tempfile.TemporaryDirectory() as workspace, tempfile.TemporaryDirectory() as other:
        sandbox = Sandbox(workspace, SandboxConfig())
        unfiltered = Sandbox(other, SandboxConfig(seccomp=False))

        def bare() -> None:
            command, fds = sandbox.bwrap_command(["true"], sandbox._env(None))
            try:
                subprocess.run(command, check=True, pass_fds=fds)
            finally:
                for fd in fds:
                    os.close(fd)

        cases = {
            "no sandbox (subprocess `true`)": lambda: subprocess.run(["true"], check=True),
            "bubblewrap command line only": bare,
            "lagoon Sandbox.run(['true']), no seccomp filter": lambda: unfiltered.run(["true"]),
            "lagoon Sandbox.run(['true'])": lambda: sandbox.run(["true"]),
        }
        for fn in cases.values():  # warm-up
            for _ in range(5):
                fn()
        times: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, float] = {name: 0.0 for name in cases}
        for _ in range(args.rounds):
            for name, fn in cases.items():
                cpu_start = cpu_seconds()
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000)
                cpu[name] += cpu_seconds() - cpu_start
        ok = sandbox.run(["true"]).ok
        assert ok
        support = sandbox.cgroups
        controllers = [name for name, parent in (("pids", support.pids_parent), ("memory", support.memory_parent),
                                                 ("cpu", support.cpu_parent)) if parent is not None]
        if "cpu" in controllers and realtime_blocks_cpu(support):
            controllers.remove("cpu")  # a real-time task cannot join a v1 cpu cgroup without a real-time budget
        cgroups = "+".join(controllers) + " cgroups" if controllers else "no cgroups"
        identity = (f"lagoon as root: setup as root, command dropped to uid {sandbox.uid} by setpriv"
                    if sandbox.as_root else "lagoon as an ordinary user: user namespace")
    baseline = statistics.median(times["no sandbox (subprocess `true`)"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    priority = ("real-time priority (SCHED_FIFO 10), so other jobs on the shared machine do not delay it"
                if args.realtime else "normal priority")
    lines = [f"{args.rounds} rounds, interleaved; {identity}; sandbox with {cgroups}, seccomp filter, prlimit "
             f"launcher, output files; run at {priority}. Load average at the start: {load_at_start}; at the end: "
             f"{load} (2-core machine shared with other jobs).", "",
             "| case | p10 ms | p50 ms | p99 ms | p50 / no-sandbox p50 | CPU ms per start |",
             "|---|---|---|---|---|---|"]
    for name, values in times.items():
        p50 = statistics.median(values)
        lines.append(f"| {name} | {percentile(values, 10):.1f} | {p50:.1f} | {percentile(values, 99):.1f} | "
                     f"{p50 / baseline:.1f}x | {cpu[name] / args.rounds * 1000:.1f} |")
    p50 = statistics.median(times["lagoon Sandbox.run(['true'])"])
    own_cpu = cpu["lagoon Sandbox.run(['true'])"] / args.rounds * 1000
    lines += ["", f"Goal p50 ≤ 20 ms: {'met' if p50 <= 20 else 'missed'} ({p50:.1f} ms wall). CPU time per start "
                  f"(harness + bwrap + sandboxed process): {own_cpu:.1f} ms."]
    if args.dry_run:
        print("\n".join(lines))
    else:
        record("Sandbox start latency", lines)


if __name__ == "__main__":
    main()
