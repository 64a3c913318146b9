"""Learning-rate schedules as a multiplier of each parameter group's base rate.

``lr_scale(config, step)`` is the factor for the update made *at* optimizer step ``step`` (0-based):

- warmup: linear from 1/W to 1 over the first W = round(warmup_fraction · steps) steps;
- ``constant``: 1 after warmup;
- ``wsd`` (warmup-stable-decay; Hu et al. 2024, "MiniCPM", §4.1; Hägele et al. 2024): 1 until the last
  D = round(decay_fraction · steps) steps, then down to `min_lr_ratio` at the final step, linearly or as
  1 − sqrt(progress);
- ``cosine``: half a cosine from 1 after warmup to `min_lr_ratio` at the final step.

The optimizer multiplies every group's base rate (Muon's and AdamW's alike) by this factor.
"""

from __future__ import annotations

import math

from lagoon.train.config import TrainConfig


def warmup_steps(config: TrainConfig) -> int:
    return int(round(config.warmup_fraction * config.steps))


def decay_steps(config: TrainConfig) -> int:
    return int(round(config.decay_fraction * config.steps))


def lr_scale(config: TrainConfig, step: int) -> float:
    """The learning-rate multiplier for optimizer step `step` (0 ≤ step < config.steps)."""
    assert 0 <= step < config.steps, step
    warmup = warmup_steps(config)
    if step < warmup:
        return (step + 1) / warmup
    floor = config.min_lr_ratio
    last = config.steps - 1
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "cosine":
        span = max(last - warmup, 1)
        progress = (step - warmup) / span
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay = decay_steps(config)
    decay_start = config.steps - decay
    if decay == 0 or step < decay_start:
        return 1.0
    # Progress runs from 1/decay at the first decay step to 1 at the last, so the last update is at the floor.
    progress = (step - decay_start + 1) / decay
    shape = progress if config.decay_shape == "linear" else math.sqrt(progress)
    return floor + (1 - floor) * (1 - shape)
