"""Helpers shared by the benchmark scripts: timing, spreads, environment notes and appending to RESULTS.md.

How a benchmark measures: both sides in the same run, interleaved round by
round (the order alternates between rounds, so neither side always runs first), after untimed warm-up
calls, over enough rounds to resolve the goal; the figure is a ratio, reported with its spread over the
rounds (median and min–max of the per-round ratios). `record` appends the run to RESULTS.md with its
command, machine, thread counts and the machine's load at the start and end of the run; a ``Table row``
line (`table_row`) in the entry is what `python -m benchmarks.table` puts into README's table.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")

# The machine's 1-minute load average when the benchmark module was imported (its start).
START_LOAD = os.getloadavg()[0]


def demo_pretraining(work: Path, shards: str | None) -> tuple[Path, Path]:
    """(config, shard set) for timing `lagoon train` on the main job's pretraining: the [model], [data], [optim],
    [train] and [sdc] sections of configs/demo.toml written to WORK/pretrain.toml, and `shards`, or the
    embedded shard set built into WORK/shards when `shards` is None."""
    import subprocess
    import tomllib

    from lagoon.configio import dumps_toml

    root = Path(__file__).resolve().parents[1]
    built = Path(shards) if shards else work / "shards"
    if not shards:
        subprocess.run([sys.executable, "-m", "lagoon", "data", "build", str(root / "configs" / "data_embedded.toml"),
                        "--out", str(built), "--quiet"],
                       cwd=root, check=True, env={**os.environ, "PYTHONPATH": str(root / "src")})
    demo = tomllib.loads((root / "configs" / "demo.toml").read_text())
    config = work / "pretrain.toml"
    config.write_text(dumps_toml({key: demo[key] for key in ("model", "data", "optim", "train", "sdc")}))
    return config, built


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a gloo rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gloo_entry(rank: int, world_size: int, port: int, threads: int, worker: Callable[..., None], args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=10))
    try:
        worker(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def spawn_gloo(worker: Callable[..., None], world_size: int, *args, threads: int = 1) -> None:
    """Run ``worker(rank, world_size, *args)`` in `world_size` processes joined by a gloo process group, each
    with `threads` torch threads; `worker` must be a module-level function (it is pickled)."""
    import torch.multiprocessing as mp

    mp.spawn(_gloo_entry, args=(world_size, free_port(), threads, worker, args), nprocs=world_size, join=True)


def time_it(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Wall-clock seconds of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Time several alternatives round-robin, so machine noise hits them alike.

    Each alternative is called `warmup` times untimed first. The order reverses every other round
    (A B, B A, A B, ...), so a side that benefits from running first or second does so half the time.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_index in range(rounds):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios numerator[i] / denominator[i] (e.g. baseline seconds ÷ lagoon seconds)."""
    assert len(numerator) == len(denominator) and numerator, "ratios need paired rounds"
    return [a / b for a, b in zip(numerator, denominator)]


def spread(values: Sequence[float], fmt: str = "{:.2f}", unit: str = "") -> str:
    """``median (min–max)`` of `values`, each formatted with `fmt` and followed by `unit`."""
    low, mid, high = min(values), median(values), max(values)
    return f"{fmt.format(mid)}{unit} ({fmt.format(low)}–{fmt.format(high)}{unit})"


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); with fewer than 2 values all three are the value."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def load() -> float:
    """The machine's 1-minute load average now."""
    return os.getloadavg()[0]


def load_note() -> str:
    """One line: the 1-minute load average at the start and end of this run, on this many CPUs."""
    return (f"Load (1-minute average) {START_LOAD:.1f} at the start, {load():.1f} at the end, on {os.cpu_count()} "
            f"CPUs{' (a shared machine: other jobs ran beside this one)' if max(START_LOAD, load()) >= 2 else ''}.")


def cpu_model() -> str:
    """The CPU's model name and the vector ISA torch dispatches to (bf16 GEMM speed hangs on both)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def machine() -> str:
    return (f"{platform.machine()} ({cpu_model()}), {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def command() -> str:
    """The command line that reproduces this run, as run from the repository root."""
    module = "benchmarks." + Path(sys.argv[0]).stem
    return " ".join(["python -m", module, *map(shlex.quote, sys.argv[1:])])


def table_row(row: str, goal: str, measured: str, status: str) -> str:
    """The machine-readable line of README's benchmark table for table row `row` (see benchmarks/table.py).

    `goal`, `measured` and `status` become that row's cells; none may contain ``|``.
    """
    for cell in (goal, measured, status):
        assert "|" not in cell and "\n" not in cell, f"a table cell cannot hold '|' or a newline: {cell!r}"
    return f"Table row `{row}` | {goal} | {measured} | {status}".rstrip()


def record(section: str, lines: list[str]) -> None:
    """Append a dated block to RESULTS.md under `section`, with the command that produced it and the load."""
    stamp = datetime.date.today().isoformat()
    block = [f"### {section} ({stamp})", "", f"Command: `{command()}`  ", f"Machine: {machine()}  ",
             load_note(), "", *lines, ""]
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    RESULTS.write_text(text.rstrip() + "\n\n" + "\n".join(block))
    print("\n".join(block))
