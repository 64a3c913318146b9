"""Pretraining: ``lagoon train CONFIG --run-dir DIR`` and its Python form, `run_training`.

    from lagoon.config import load_config
    from lagoon.train import run_training, evaluate_bpb, Hooks

    result = run_training(load_config("configs/train_tiny.toml"), "runs/tiny")   # resumes when it can
    result.step, result.loss, result.eval_bpb, result.checkpoint

Modules: `config` (the ``[train]`` section), `loop` (run_training), `trainer` (one step, evaluation,
checkpoint save/restore), `checkpoint` (directory contract, manifest, atomic writes), `evaluate`
(bits per byte), `schedule` (learning-rate shapes), `hooks` (SDC checks and other quiet-point code),
`metrics` (metrics.jsonl), `distributed` (torchrun setup), `rng` (RNG states for exact resume).

Names are imported lazily so that reading a config does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "lagoon.train.config",
    "run_training": "lagoon.train.loop",
    "TrainResult": "lagoon.train.loop",
    "evaluate_bpb": "lagoon.train.evaluate",
    "Hooks": "lagoon.train.hooks",
    "HookContext": "lagoon.train.hooks",
    "lr_scale": "lagoon.train.schedule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lagoon.train' has no attribute {name!r}")
