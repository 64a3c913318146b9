"""Agent throughput: arith-code episodes per minute against lagoon serve with 1, 2 and 4 workers.

A tiny Laguna is first warmed up on `lagoon.agent.arith.supervised_examples` (the exact token-in/token-out
transcripts) until it follows the format, saved with its tokenizer, and served by ``lagoon serve`` in a
subprocess. Then the same arith-code tasks run through the production harness (token-in/token-out mode,
real sandboxes, grading) with 1, 2 and 4 parallel workers against that one server; the ratio to 1 worker
is the claim. The solve rate is reported alongside so the episodes are known to be real ones.

    .venv/bin/python -m benchmarks.agent_episodes [--episodes 24] [--train-steps 400] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import record
from lagoon.agent.arith import supervised_examples
from lagoon.agent.clients import CompletionsClient
from lagoon.agent.config import AgentConfig, SamplingConfig
from lagoon.agent.evaluate import evaluate, summarize
from lagoon.agent.local_server import LocalServer
from lagoon.agent.tasks import load_task_set


def build_tokenizer(directory: Path) -> Path:
    from lagoon.data.chat import render_chat
    from lagoon.data.tokenizer import save_tokenizer, train_tokenizer

    texts = [render_chat(e["messages"]) for level in (1, 2) for e in supervised_examples(400, level=level, seed=5)]
    return save_tokenizer(train_tokenizer(texts, vocab_size=512), directory)


def warm_up(out: Path, steps: int, batch: int = 16) -> Path:
    """Supervised warm-up of a tiny Laguna on perfect arith-code transcripts (level 1)."""
    from lagoon.config import load_config
    from lagoon.infer.tokenizer import Tokenizer
    from lagoon.model import IGNORE_INDEX, LagunaForCausalLM, save_pretrained

    tokenizer_dir = build_tokenizer(out / "tokenizer")
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    examples = supervised_examples(2000, level=1, seed=1, tokenizer=tokenizer)
    # The tiny preset cut to two layers (one dense, one MoE): copying the expression into print(...) and the
    # observation into ANSWER: is all the format asks, and two layers learn it in a few hundred steps.
    config = load_config(None, [f"model.vocab_size={tokenizer.vocab_size}", "model.sliding_window=512",
                                "model.num_hidden_layers=2"], base={"model": {"preset": "tiny"}}).model
    torch.set_num_threads(1)  # small matrices: one thread is as fast and does not fight the server for cores
    torch.manual_seed(0)
    model = LagunaForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = random.Random(0)
    for step in range(steps):
        rows = rng.sample(examples, batch)
        length = max(len(r["input_ids"]) for r in rows)
        inputs = torch.full((batch, length), 9, dtype=torch.long)
        targets = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(rows):
            ids, mask = row["input_ids"], row["loss_mask"]
            inputs[i, : len(ids)] = torch.tensor(ids)
            targets[i, : len(ids) - 1] = torch.tensor([t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])])
        for group in optimizer.param_groups:  # linear decay to 10%
            group["lr"] = 3e-3 * (1 - 0.9 * step / steps)
        loss = model(inputs, targets=targets).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_router_biases()
        if step % 100 == 0 or step == steps - 1:
            print(f"warm-up step {step}: loss {loss.item():.4f}", flush=True)
    return save_pretrained(model.eval(), out / "ckpt", tokenizer_dir=tokenizer_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=24, help="arith-code episodes per worker count")
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--checkpoint", default=None, help="reuse (or create) the warmed-up checkpoint here")
    parser.add_argument("--dry-run", action="store_true", help="print instead of appending to RESULTS.md")
    args = parser.parse_args()
    from lagoon.infer.tokenizer import Tokenizer

    work = Path(tempfile.mkdtemp(prefix="lagoon-bench-agent-"))
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / "model"
    if not (checkpoint / "ckpt" / "config.json").is_file():
        started = time.perf_counter()
        warm_up(checkpoint, args.train_steps)
        print(f"warm-up took {time.perf_counter() - started:.0f} s")
    tokenizer = Tokenizer.from_dir(checkpoint / "ckpt")
    config = AgentConfig(sampling=SamplingConfig(temperature=0.7, max_tokens_per_turn=48))
    rows = []
    with LocalServer(checkpoint / "ckpt", work / "serve.log") as server:
        client = CompletionsClient(server.base_url)
        for workers in (1, 2, 4):
            # Fresh tasks for each worker count (same level, other seeds), so no run is a resume of another.
            tasks = load_task_set(f"arith-code:n={args.episodes},level=1,seed={100 + workers}")
            started = time.perf_counter()
            results = evaluate(tasks, client, config, work / f"eval-{workers}", workers=workers, tokenizer=tokenizer,
                               seed=workers, show_progress=False)
            elapsed = time.perf_counter() - started
            summary = summarize(results)
            rows.append((workers, len(results) / elapsed * 60, summary, elapsed))
            print(f"{workers} workers: {len(results) / elapsed * 60:.1f} episodes/min, {summary}", flush=True)
    base = rows[0][1]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"{args.episodes} arith-code level-1 episodes per row, token-in/token-out against one `lagoon serve` "
             f"(tiny Laguna warmed up {args.train_steps} steps on supervised transcripts), real sandboxes and grading. "
             f"Load average at the end: {load} (2-core machine shared with other jobs).", "",
             "| workers | episodes/min | vs 1 worker | solved | mean turns | exit reasons |", "|---|---|---|---|---|---|"]
    for workers, rate, summary, _ in rows:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["exit_reasons"].items()))
        lines.append(f"| {workers} | {rate:.1f} | {rate / base:.2f}x | {summary['resolved']}/{summary['episodes']} | "
                     f"{summary['mean_turns']:.1f} | {reasons} |")
    if args.dry_run:
        print("\n".join(lines))
    else:
        record("Agent episodes per minute on arith-code (lagoon serve)", lines)


if __name__ == "__main__":
    main()
