"""The ``[train]`` section: steps, batch shape, schedule, precision, evaluation, checkpoints, resume.

    [train]
    steps = 600
    grad_accum = 1                # micro-batches per rank per optimizer step
    schedule = "wsd"              # warmup, stable, decay (Hägele et al. 2024); or "cosine", "constant"
    warmup_fraction = 0.05
    decay_fraction = 0.2
    eval_every = 100
    checkpoint_every = 200
    keep_last = 2

The batch shape lives in ``[data]`` (``seq_len``, ``global_batch_size``: sequences per optimizer step,
summed over data-parallel ranks). The global batch is what one optimizer step sees, whatever the world
size: each rank takes ``global_batch_size / world_size`` sequences from the loader and splits them into
`grad_accum` micro-batches, so a run on 2 ranks computes the same update as a run on 1 (to float
tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lagoon.errors import check


@dataclass
class TrainConfig:
    """How `lagoon train` runs: batch shape, schedule, precision, evaluation and checkpoints."""

    steps: int = 1000
    """Optimizer steps of the whole run (a resumed run continues up to this count)."""
    grad_accum: int = 1
    """Micro-batches per rank per optimizer step (gradients are accumulated, then one update)."""

    schedule: Literal["wsd", "cosine", "constant"] = "wsd"
    """Learning-rate shape after warmup: warmup-stable-decay, cosine to `min_lr_ratio`, or constant."""
    warmup_fraction: float = 0.05
    """Share of `steps` spent warming up linearly from lr/warmup_steps to the peak."""
    decay_fraction: float = 0.2
    """wsd only: share of `steps` at the end over which the rate decays to `min_lr_ratio`."""
    decay_shape: Literal["linear", "sqrt"] = "linear"
    """wsd only: linear decay, or 1 − sqrt (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training
    Beyond Fixed Training Durations", §3.1, found it slightly better)."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of the peak (wsd and cosine)."""

    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value before each update; 0 disables clipping."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Autocast dtype of the forward pass: "auto" is bfloat16 on CUDA GPUs that support it and float32 on
    CPU (bf16 autocast runs on CPU but is slower there without AMX). Master weights and optimizer state
    stay float32."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: "auto" picks CUDA when available (one GPU per rank, by LOCAL_RANK)."""
    num_threads: int = 0
    """torch intra-op threads for this process; 0 keeps torch's default (set 1 when running many proxies)."""
    seed: int = 0
    """Seeds model initialisation, the data loader and every RNG; runs with the same seed are identical."""

    eval_every: int = 100
    """Evaluate bits per byte of every capability group every this many steps (0: only at the end)."""
    eval_tokens: int = 16384
    """Held-out tokens evaluated per capability group (fewer if the group's eval set is smaller)."""
    eval_groups: list[str] | None = None
    """Capability groups to evaluate; all groups of the shard set when not given."""
    eval_batch_size: int = 8
    """Sequences per evaluation forward pass."""

    log_every: int = 1
    """Write a metrics line every this many steps (eval and checkpoint steps always get one)."""
    progress: bool = True
    """Show a rich progress bar on rank 0 (turn off for quiet in-process proxy runs)."""

    checkpoint_every: int = 500
    """Write a checkpoint every this many steps (0: only at the end)."""
    checkpoint_at_end: bool = True
    """Write a checkpoint after the last step (needed for `run_training` to be a no-op when re-run)."""
    keep_last: int = 3
    """Checkpoints kept in DIR/checkpoints; older ones are deleted after each successful write."""
    init_from: str | None = None
    """A lagoon or Hugging Face Laguna checkpoint directory whose weights start the run (e.g. an
    imported Laguna or a pretrained tiny model); its architecture replaces `[model]`. Ignored when
    resuming from DIR/checkpoints."""
    vocab_from_data: bool = True
    """Set model.vocab_size to the shard set's tokenizer size (a fresh model only); when false, a
    model whose vocabulary is smaller than the tokenizer's is refused."""
    max_rollbacks: int = 3
    """How many times hooks may roll the run back to its last verified checkpoint before it stops."""

    def validate(self) -> None:
        for name in ("steps", "grad_accum", "eval_tokens", "eval_batch_size", "log_every", "keep_last"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        check(0 <= self.warmup_fraction < 1, "warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction}")
        check(0 <= self.decay_fraction <= 1, "decay_fraction", f"must be in [0, 1], got {self.decay_fraction}")
        if self.schedule == "wsd":
            check(self.warmup_fraction + self.decay_fraction <= 1, "decay_fraction",
                  f"warmup ({self.warmup_fraction}) plus decay ({self.decay_fraction}) exceed the whole run")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0 (0 disables clipping), got {self.max_grad_norm}")
        check(self.num_threads >= 0, "num_threads", f"must be >= 0, got {self.num_threads}")
        check(self.eval_every >= 0, "eval_every", f"must be >= 0 (0: only at the end), got {self.eval_every}")
        check(self.checkpoint_every >= 0, "checkpoint_every",
              f"must be >= 0 (0: only at the end), got {self.checkpoint_every}")
        check(self.max_rollbacks >= 0, "max_rollbacks", f"must be >= 0, got {self.max_rollbacks}")
        if self.eval_groups is not None:
            check(len(self.eval_groups) > 0, "eval_groups", "must name at least one group (or be left out for all)")
