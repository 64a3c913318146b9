"""lagoon's run configuration: one TOML file with a section per stage, dotted overrides, load-time checks.

    [model]            lagoon.model.config.ModelConfig
    [data]             lagoon.data.config.DataConfig
    [train]            lagoon.train.config.TrainConfig
    [optim]            lagoon.optim.config.OptimConfig
    [parallel]         lagoon.parallel.config.ParallelConfig
    [sdc]              lagoon.sdc.config.SDCConfig
    [agent]            lagoon.agent.config.AgentConfig
    [automix]          lagoon.automix.config.AutomixConfig
    [rl]               lagoon.rl.config.RLConfig
    [serve]            lagoon.infer.config.ServeConfig
    [demo]             lagoon.demo.config.DemoConfig

Every command reads the sections it needs from the same file, so one pipeline config describes a whole
run. Unknown keys, wrong types and out-of-range values fail at load time with the dotted field name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lagoon.agent.config import AgentConfig
from lagoon.automix.config import AutomixConfig
from lagoon.configio import apply_overrides, from_dict, read_toml, to_dict
from lagoon.data.config import DataConfig
from lagoon.demo.config import DemoConfig
from lagoon.infer.config import ServeConfig
from lagoon.model.config import ModelConfig
from lagoon.optim.config import OptimConfig
from lagoon.parallel.config import ParallelConfig
from lagoon.rl.config import RLConfig
from lagoon.sdc.config import SDCConfig
from lagoon.train.config import TrainConfig


@dataclass
class LagoonConfig:
    """A whole lagoon run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The Laguna architecture."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data: building shard sets (sources, curation, tokenizer, synthetic) and reading them in training."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Pretraining: steps, schedule, precision, evaluation, checkpoints."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer: Muon / AdamW, learning rates, Newton–Schulz, distributed Muon."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """How the ranks of every trainer hold the model: DDP, FSDP2 or HSDP, activation checkpointing, precision."""
    sdc: SDCConfig = field(default_factory=SDCConfig)
    """Silent-data-corruption checks: replica fingerprints, vote, reactions, fault injection."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """The code-as-action agent: sandbox, budgets, sampling."""
    automix: AutomixConfig = field(default_factory=AutomixConfig)
    """AutoMixer: proxy sweep, surrogates, mixture optimizer, validation."""
    rl: RLConfig = field(default_factory=RLConfig)
    """Asynchronous agent RL: trainer, actors, inference servers, trajectory table."""
    serve: ServeConfig = field(default_factory=ServeConfig)
    """``lagoon serve``: the inference engine and its OpenAI-compatible server."""
    demo: DemoConfig = field(default_factory=DemoConfig)
    """The main job: which stages ``lagoon demo`` runs and how pretraining is launched."""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> LagoonConfig:
    """Read `path` (TOML; optional), apply ``a.b=value`` overrides, and validate everything."""
    data = dict(base or {})
    if path is not None:
        data.update(read_toml(path))
    data = apply_overrides(data, overrides or [])
    return from_dict(LagoonConfig, data)


def config_to_dict(config: LagoonConfig) -> dict[str, Any]:
    return to_dict(config)
