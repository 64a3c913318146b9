"""``lagoon demo``: the main job on the embedded default.

For now it trains the tiny Laguna on bytes of a text every Python installation carries (the standard
library's ``this``/``zen`` and ``pydoc`` topics) and exports a Hugging Face checkpoint; later stages
(data pipeline, AutoMixer, Muon, RL) extend it into the full pipeline.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lagoon.errors import LagoonError


def register(subparsers) -> None:
    from lagoon.cli import add_config_arguments

    demo = subparsers.add_parser("demo", help="run the main job end to end on the embedded default")
    add_config_arguments(demo, required=False)
    demo.add_argument("--run-dir", default="runs/demo", help="where the run writes its outputs")
    demo.add_argument("--steps", type=int, default=60, help="training steps")
    demo.set_defaults(handler=run_demo)


def builtin_text() -> bytes:
    import pydoc_data.topics

    return "\n\n".join(pydoc_data.topics.topics.values()).encode("utf-8")


def run_demo(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from lagoon.config import load_config
    from lagoon.model import LagunaForCausalLM, save_pretrained

    config = load_config(args.config, args.overrides, base={"model": {"preset": "tiny"}})
    model_config = config.model
    if model_config.vocab_size < 256:
        raise LagoonError("model.vocab_size must be at least 256 for the byte-level demo")
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = torch.frombuffer(bytearray(builtin_text()), dtype=torch.uint8).long()
    torch.manual_seed(0)
    model = LagunaForCausalLM(model_config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    batch, seq = 8, 128
    with (run_dir / "metrics.jsonl").open("w") as metrics, Progress() as progress:
        task = progress.add_task("training tiny Laguna", total=args.steps)
        for step in range(args.steps):
            starts = torch.randint(0, len(data) - seq - 1, (batch,))
            window = torch.stack([data[s : s + seq + 1] for s in starts.tolist()])
            started = time.perf_counter()
            loss = model(window[:, :-1], targets=window[:, 1:]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            load = model.update_router_biases()
            metrics.write(json.dumps({"step": step, "loss": loss.item(), "tokens_per_s": batch * seq / (time.perf_counter() - started), **load}) + "\n")
            progress.update(task, advance=1, description=f"training tiny Laguna, loss {loss.item():.3f}")
    out = save_pretrained(model, run_dir / "hf")
    print(f"final loss {loss.item():.3f}; Hugging Face checkpoint in {out}")
    return 0
