"""Claim: the mixture loader produces sequences at least 10× faster than the tiny model trains on them.

Same run, same shape (global batch 8 × 256 tokens by default), interleaved: each round times
`--loader-batches` batches of `MixtureLoader` on the natural mixture of a built shard set (memory-mapped
reads) and then one training step of the ``tiny`` Laguna on a batch from that loader (forward, backward,
AdamW step — what training does with each batch), so both sides see the same machine at the same moment.
Two untimed training steps and a few loader batches warm up first. The figure is the median over rounds
of (loader sequences/s ÷ training sequences/s) in that round, with its range, in wall time and in CPU
time of this process; both sides run at the process's torch thread count (the loader itself is
single-threaded NumPy). On a loaded machine the wall-clock ratio flatters the loader (its short bursts fit
in a scheduler slice, a training step of seconds is preempted many times), so the goal is judged on CPU
time, which measures what each side costs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import median, record, spread, table_row

GOAL = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", default="", help="a built shard set (default: a quick build)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--loader-batches", type=int, default=40, help="loader batches timed per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from lagoon.data import MixtureLoader, ShardSet
    from lagoon.data.build import build, embedded_config
    from lagoon.model import LagunaForCausalLM, preset_config

    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(args.shards) if args.shards else build(embedded_config(quick=True), Path(scratch) / "q", quiet=True)
        shards = ShardSet.open(directory)
        loader = MixtureLoader(shards, shards.natural_mixture(), args.seq, args.batch, seed=0, repetition_cap=1e9)
        torch.manual_seed(0)
        model = LagunaForCausalLM(preset_config("tiny")).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def train_step() -> tuple[float, float]:
            batch = next(loader)
            started, cpu = time.perf_counter(), time.process_time()
            loss = model(batch.input_ids, targets=batch.targets, document_ids=batch.document_ids).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return time.perf_counter() - started, time.process_time() - cpu

        def load_batches() -> tuple[float, float]:
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.loader_batches):
                next(loader)
            return ((time.perf_counter() - started) / args.loader_batches,
                    (time.process_time() - cpu) / args.loader_batches)

        for _ in range(20):
            next(loader)
        for _ in range(2):
            train_step()
        loader_s, train_s = [], []
        for round_index in range(args.rounds):
            if round_index % 2 == 0:
                loader_s.append(load_batches())
                train_s.append(train_step())
            else:
                train_s.append(train_step())
                loader_s.append(load_batches())
    per_round = [t[0] / l[0] for l, t in zip(loader_s, train_s)]  # (batch/l) ÷ (batch/t)
    per_round_cpu = [t[1] / l[1] for l, t in zip(loader_s, train_s)]
    loader_rate = [args.batch * args.seq / s for s, _ in loader_s]
    train_rate = [args.batch * args.seq / s for s, _ in train_s]
    ratio = median(per_round_cpu)
    lines = [f"Global batch {args.batch} × {args.seq} tokens, natural mixture over {len(shards.leaves)} leaves; "
             f"tiny Laguna step = forward + backward + AdamW; {torch.get_num_threads()} torch thread(s); "
             f"{args.rounds} interleaved rounds ({args.loader_batches} loader batches and one training step each, "
             "the order alternating).", "",
             "| side | tokens/s, median (min–max) over rounds |", "|---|---|",
             f"| MixtureLoader | {spread(loader_rate, '{:,.0f}')} |",
             f"| tiny model training | {spread(train_rate, '{:,.0f}')} |",
             f"| ratio per round, wall | {spread(per_round, '{:,.0f}', '×')} |",
             f"| ratio per round, CPU time (goal ≥ {GOAL:g}×) | {spread(per_round_cpu, '{:,.0f}', '×')} |", "",
             table_row("data_loader", f"≥ {GOAL:g}×", f"{spread(per_round_cpu, '{:,.0f}', '×')} per CPU-s "
                       f"(wall {spread(per_round, '{:,.0f}', '×')}), {torch.get_num_threads()} thread(s)",
                       "met" if ratio >= GOAL else "missed")]
    print("\n".join(lines))
    if not args.no_record:
        record("Data: loader throughput vs tiny-model training, interleaved (issue 21)", lines)


if __name__ == "__main__":
    main()
