"""A quick embedded shard set built once per session, and an AutoMixer config with proxies small enough
that a handful of them train in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from lagoon.configio import dumps_toml

# One narrow layer on the quick corpus's 4096-token vocabulary: a training step takes milliseconds.
TINY_PROXY = {"preset": "tiny", "hidden_size": 32, "head_dim": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 1, "attention_heads_by_type": {"full_attention": 2, "sliding_attention": 2},
              "intermediate_size": 64, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
              "num_experts": 4, "num_experts_per_tok": 2}


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    from lagoon.data.build import build, embedded_config

    return build(embedded_config(quick=True), tmp_path_factory.mktemp("automix-shards") / "quick", quiet=True)


def automix_config(shard_dir: Path, **automix) -> dict:
    """A whole run config (plain data): tiny proxies, 8 steps of 4 × 64 tokens, 2 workers, 3 folds."""
    sections = {key: automix.pop(key) for key in ("proxy", "surrogate", "optimizer", "validation") if key in automix}
    config = {
        "data": {"shards": str(shard_dir), "seq_len": 64, "global_batch_size": 4},
        "optim": {"name": "adamw", "adamw_lr": 0.003, "weight_decay": 0.0},
        "train": {"eval_tokens": 512, "eval_batch_size": 8, "warmup_fraction": 0.1},
        "automix": {
            "num_proxies": 6, "workers": 2, "concentration": [0.3, 5.0], "max_epochs": 4.0,
            **automix,
            "proxy": {"model": TINY_PROXY, "train": {"steps": 8}, **sections.get("proxy", {})},
            "surrogate": {"folds": 3, **sections.get("surrogate", {})},
            "optimizer": {"candidates": 2000, **sections.get("optimizer", {})},
            "validation": {"scale": 2.0, "token_scale": 1.5, "seeds": [0, 1], "proxy_scale_check": False,
                           **sections.get("validation", {})},
        },
    }
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(dumps_toml(config))
    return path
