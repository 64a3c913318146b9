"""Training hooks: code that runs at the loop's quiet points (silent-data-corruption checks, probes, profilers).

    class MyCheck(lagoon.train.Hooks):
        def after_optimizer_step(self, ctx):
            if not weights_agree(ctx.model, ctx.group):
                ctx.request_rollback("replicas disagree")
            ctx.log({"sdc/checked": 1})
        def before_checkpoint_save(self, ctx):
            ctx.sdc_digest = digest_of(ctx.model)          # stored in train_state/state.json
        def after_checkpoint_load(self, ctx):
            assert ctx.sdc_digest is None or ctx.sdc_digest == digest_of(ctx.model)

    run_training(config, run_dir, hooks=[MyCheck()])

Every method is called on every rank at the same point, so a hook may run collectives on ``ctx.group``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from lagoon.model import LagunaForCausalLM


class Hooks:
    """Base class; override the methods you need. All are no-ops here."""

    def after_optimizer_step(self, ctx: "HookContext") -> None:
        """After the update and the router-bias step of optimizer step ``ctx.step``, before metrics are
        written and before any checkpoint of that step: the weights are quiet and identical on every
        healthy data-parallel replica."""

    def before_checkpoint_save(self, ctx: "HookContext") -> None:
        """Just before checkpoint ``ctx.step`` is written; set ``ctx.sdc_digest`` to store a verified digest."""

    def after_checkpoint_load(self, ctx: "HookContext") -> None:
        """After a resume or a rollback restored checkpoint ``ctx.step`` (``ctx.sdc_digest`` is its stored digest)."""


@dataclass
class HookContext:
    """What a hook sees. `step` counts completed optimizer steps."""

    step: int
    model: LagunaForCausalLM
    """The unwrapped model (not the DDP wrapper)."""
    optimizer: Any
    """The `lagoon.optim` optimizer object."""
    group: dist.ProcessGroup | None
    """The data-parallel process group (None in a single-process run)."""
    rank: int
    world_size: int
    run_dir: Path
    config: Any
    """The whole `LagoonConfig` of the run."""
    wrapped_model: nn.Module | None = None
    """The module the loop calls (DDP wrapper or the model itself)."""
    sdc_digest: str | None = None
    """Digest stored with (or about to be stored with) the current checkpoint."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """This step's metrics so far (loss, lr, grad_norm, ...)."""
    _log: Callable[[dict[str, Any]], None] | None = None
    rollback_reason: str | None = None

    def log(self, values: dict[str, Any]) -> None:
        """Add values to this step's metrics line (rank 0's values are the ones written)."""
        self.metrics.update(values)
        if self._log is not None:
            self._log(values)

    def request_rollback(self, reason: str) -> None:
        """Ask the loop to restore the last verified checkpoint and continue from there. Every rank sees the
        request (the loop combines them), so one rank's detection rolls back all."""
        self.rollback_reason = reason


def call_hooks(hooks: list[Hooks], method: str, ctx: HookContext) -> None:
    for hook in hooks:
        getattr(hook, method)(ctx)
