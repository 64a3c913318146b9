"""A quick embedded shard set built once per session, and a small training config over it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lagoon.configio import dumps_toml

# A model small enough that a step takes tens of milliseconds on one thread.
SMALL_MODEL = {"preset": "tiny", "hidden_size": 64, "head_dim": 16, "num_hidden_layers": 2, "intermediate_size": 128,
               "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64}


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    from lagoon.data.build import build, embedded_config

    out = tmp_path_factory.mktemp("shards") / "quick"
    build(embedded_config(quick=True), out, quiet=True)
    return out


def train_config(shard_dir: Path, **sections) -> dict:
    """A run config (plain data): the small model, Muon with fp32 Newton–Schulz, one thread, frequent checkpoints."""
    config = {
        "model": dict(SMALL_MODEL),
        "data": {"shards": str(shard_dir), "seq_len": 64, "global_batch_size": 8},
        "optim": {"name": "muon", "lr": 0.01, "adamw_lr": 0.003, "ns_dtype": "float32"},
        "train": {"steps": 16, "eval_every": 8, "eval_tokens": 512, "checkpoint_every": 4, "keep_last": 3,
                  "num_threads": 1, "progress": False, "warmup_fraction": 0.1},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(dumps_toml(config))
    return path


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
