"""Claim: the mixture loader produces sequences at least 10× faster than the tiny model trains on them.

Same run, same shape (global batch 8 × 256 tokens by default): sequences per second of
`MixtureLoader` on the natural mixture of a built shard set (memory-mapped reads), against sequences per
second of one training step of the ``tiny`` Laguna (forward, backward, AdamW step) on those batches.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import median, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", default="", help="a built shard set (default: a quick build)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--loader-steps", type=int, default=400)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from lagoon.data import MixtureLoader, ShardSet
    from lagoon.data.build import build, embedded_config
    from lagoon.model import LagunaForCausalLM, preset_config

    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(args.shards) if args.shards else build(embedded_config(quick=True), Path(scratch) / "q", quiet=True)
        shards = ShardSet.open(directory)
        loader = MixtureLoader(shards, shards.natural_mixture(), args.seq, args.batch, seed=0, repetition_cap=1e9)
        for _ in range(20):
            next(loader)
        loader_times = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(args.loader_steps // 5):
                next(loader)
            loader_times.append((time.perf_counter() - started) / (args.loader_steps // 5))
        torch.manual_seed(0)
        model = LagunaForCausalLM(preset_config("tiny")).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        train_times = []
        for step in range(args.train_steps + 2):
            batch = next(loader)
            started = time.perf_counter()
            loss = model(batch.input_ids, targets=batch.targets, document_ids=batch.document_ids).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= 2:
                train_times.append(time.perf_counter() - started)
    loader_rate = args.batch / median(loader_times)
    train_rate = args.batch / median(train_times)
    lines = [f"Global batch {args.batch} × {args.seq} tokens, natural mixture over {len(shards.leaves)} leaves; "
             f"tiny Laguna step = forward + backward + AdamW, {torch.get_num_threads()} threads.", "",
             "| | sequences/s | tokens/s |", "|---|---|---|",
             f"| MixtureLoader | {loader_rate:,.0f} | {loader_rate * args.seq:,.0f} |",
             f"| tiny model training | {train_rate:,.1f} | {train_rate * args.seq:,.0f} |",
             f"| ratio (goal ≥ 10×) | {loader_rate / train_rate:,.0f}× | |"]
    print("\n".join(lines))
    if not args.no_record:
        record("Data: loader throughput vs tiny-model training consumption (issue: data pipeline)", lines)


if __name__ == "__main__":
    main()
