"""Fully asynchronous on-policy agent RL: trainer, actors and inference servers as separate processes.

    from lagoon.config import load_config
    import lagoon.rl

    result = lagoon.rl.run(load_config("configs/rl_demo.toml"), "runs/rl_demo")   # resumable; a no-op when done

The roles meet only through the weight store, the inference servers' HTTP API and the Iceberg trajectory
table, so each can run alone on another machine (``lagoon rl trainer|actor|serve``). Modules:

    orchestrate  `lagoon rl CONFIG`: warm-up, servers, supervised trainer and actors, evaluation, report
    trainer      consume the table, CISPO steps, publish weights, checkpoints with the table read position
    actor        task slots, admission control, rollouts, filters, batched idempotent appends
    rollout      the agent harness in token-in/token-out mode → table rows; held-out evaluation
    store        the Iceberg table (pyiceberg): appends, incremental scans, progress, expiry
    trajectory   the table's schema and rows
    consumer     the trainer's read position and batches
    loss         CISPO and fp32 token log-probabilities
    advantages   group-normalized advantages
    staleness    the admission rule and the trainer's last-resort drop
    batching     sequences → packed micro-batches
    weights      versioned, atomic weight publication (files, shared memory, torch.distributed broadcast)
    servers      local `lagoon serve` processes
    sft          the supervised warm-up (tokenizer + tiny policy)
    tasks        the task stream and held-out tasks
    ray_actors   actors as Ray actors
    config       the ``[rl]`` config section
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run(config, run_dir: str | Path, say=print) -> dict[str, Any]:
    """Run (or resume) the whole RL pipeline of `config` in `run_dir` (see `lagoon.rl.orchestrate`)."""
    from lagoon.rl.orchestrate import run as orchestrate

    return orchestrate(config, run_dir, say)


__all__ = ["run"]
