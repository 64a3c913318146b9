"""Claim: SDC checks at the default interval cost ≤ 0.5% of training step time.

Two gloo ranks train the `tiny` preset (DDP, Muon) with lagoon's `SDCHooks` exactly as `lagoon train` runs
them at the defaults (a replica check every ``sdc.interval`` steps, the pre-reduction checks on every step,
the watchdog), side by side with SDC switched off, in the same run:

- per step: steps alternate between SDC on and off (round-robin, so machine noise hits both alike); the
  difference of the median step times is the per-step cost (pre-reduction checks, the quiet-point hook);
- per check: the replica check (fingerprint, all-gather, vote) is timed on its own, and amortised over
  the interval.

Overhead = (per-step cost + check time / interval) ÷ step time without SDC.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.common import record


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, args, out: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from lagoon.config import load_config
    from lagoon.model import LagunaForCausalLM, preset_config
    from lagoon.optim import DataParallel, build_optimizer
    from lagoon.sdc.hooks import SDCHooks
    from lagoon.train.hooks import HookContext

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))
    config = load_config(None, [f"train.steps={10**6}", "train.checkpoint_every=0", "train.checkpoint_at_end=false"])
    torch.manual_seed(0)
    model = LagunaForCausalLM(preset_config(args.preset)).train()
    optimizer = build_optimizer(model, config.optim, DataParallel.from_group(dist.group.WORLD))
    wrapped = DistributedDataParallel(model, forward_sync_buffers=False)
    hooks = SDCHooks(config.sdc)
    vocab = model.config.vocab_size

    def train_step(step: int) -> None:
        generator = torch.Generator().manual_seed(step * world + rank)
        tokens = torch.randint(0, vocab, (args.batch, args.seq + 1), generator=generator)
        wrapped(tokens[:, :-1], targets=tokens[:, 1:]).loss.backward()
        started = time.perf_counter()
        optimizer.step(max_grad_norm=1.0)  # SDC's wrapper around the optimizer's own step
        stepping = time.perf_counter() - started
        optimizer.zero_grad()
        model.update_router_biases(dist.group.WORLD)
        return stepping

    def context(step: int) -> HookContext:
        return HookContext(step=step, model=model, optimizer=optimizer, group=dist.group.WORLD, rank=rank,
                           world_size=world, run_dir=out, config=config, wrapped_model=wrapped)

    # Time the SDC work where it happens: the comm-hook statistics (inside backward), the optimizer-step
    # prelude (statistics handed to the background gather), and the quiet-point hook.
    spent = {"observe": 0.0, "real_step": 0.0}

    def timed(name, function):
        def run(*a, **k):
            started = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent[name] += time.perf_counter() - started
        return run

    step = 0
    for _ in range(3):  # warm up, and let the hooks attach (comm hook, optimizer wrapper, SDC group)
        step += 1
        train_step(step)
        hooks.after_optimizer_step(context(step))
    monitor = hooks.precheck
    monitor._observe = timed("observe", monitor._observe)
    monitor._real_step = timed("real_step", monitor._real_step)
    times: dict[str, list[float]] = {"on": [], "off": []}
    sdc_work: list[float] = []
    from rich.progress import Progress

    progress = Progress(disable=rank != 0)
    progress.start()
    task = progress.add_task("steps (SDC on and off, alternating)", total=2 * args.steps)
    for index in range(2 * args.steps):
        progress.advance(task)
        mode = "on" if index % 2 == 0 else "off"
        monitor.active = mode == "on"
        spent.update(observe=0.0, real_step=0.0)
        dist.barrier()
        started = time.perf_counter()
        step += 1
        stepping = train_step(step)
        if mode == "on":  # the quiet-point hook as the loop calls it (a check on every interval-th step)
            hook_started = time.perf_counter()
            hooks.after_optimizer_step(context(step))
            hook = time.perf_counter() - hook_started
            if step % config.sdc.interval:  # check steps are timed on their own below
                prelude = stepping - spent["real_step"]
                sdc_work.append(spent["observe"] + prelude + hook)
        times[mode].append(time.perf_counter() - started)
    progress.stop()
    monitor.active = True
    checks = []
    for _ in range(args.checks):
        dist.barrier()
        started = time.perf_counter()
        result = hooks.checker.check(model, step)
        checks.append(time.perf_counter() - started)
        assert result.verdict.agreed
    hooks.watchdog.stop()
    if rank == 0:
        on, off = statistics.median(times["on"]), statistics.median(times["off"])
        check = statistics.median(checks)
        work = statistics.median(sdc_work)
        quartiles = statistics.quantiles(times["off"], n=4)
        spread = quartiles[2] - quartiles[0]
        interval = config.sdc.interval
        overhead = (work + check / interval) / off
        params = sum(p.numel() for p in model.parameters())
        lines = [
            f"`{args.preset}` preset ({params / 1e6:.1f}M parameters), {world} gloo ranks × {args.threads} thread(s), "
            f"{args.batch} × {args.seq} tokens per rank per step, Muon + DDP, SDC at the defaults "
            f"(`SDCHooks` as `lagoon train` runs them); {args.steps} steps each way, alternating.",
            "",
            "| step, SDC off (ms) | SDC work per step (ms) | replica check (ms) | interval | "
            "overhead at the default interval | check every step |",
            "|---|---|---|---|---|---|",
            f"| {off * 1e3:.1f} | {work * 1e3:.2f} | {check * 1e3:.2f} | {interval} | **{overhead * 100:.3f}%** | "
            f"{(work + check) / off * 100:.2f}% |",
            "",
            "SDC work per step: the pre-reduction statistics in DDP's communication hook, the optimizer-step prelude "
            "(statistics handed to the background gather) and the quiet-point hook (settling that gather, events, "
            "counters, the watchdog's mark), timed where they run "
            "(median over the SDC-on steps); the replica check (fingerprint, all-gather, vote) is timed on its own and "
            f"amortised over the interval. The A/B difference of whole steps, median(on) − median(off) = "
            f"{(on - off) * 1e3:+.1f} ms, {'is within' if abs(on - off) < spread else 'exceeds'} this machine's "
            f"step-to-step spread (interquartile range of the SDC-off steps: {spread * 1e3:.0f} ms); timing the work "
            "where it runs does not depend on that spread. Goal: ≤ 0.5% at the default interval.",
        ]
        (out / "lines.txt").write_text("\n".join(lines))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60, help="steps with SDC on (and as many with it off)")
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory)
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        mp.spawn(_worker, args=(2, free_port(), args, out), nprocs=2, join=True)
        lines = (out / "lines.txt").read_text().splitlines()
    print("\n".join(lines))
    lines.append(f"Load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine).")
    if not args.no_record:
        record("SDC check overhead on a training step (issue 6)", lines)


if __name__ == "__main__":
    main()
