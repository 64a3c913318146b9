"""Optimizers: Muon for hidden matrices, AdamW for the rest, and distributed Muon.

    from lagoon.optim import OptimConfig, build_optimizer
    optimizer = build_optimizer(model, OptimConfig(), data_parallel=None)
    ...loss.backward()
    metrics = optimizer.step(max_grad_norm=1.0)      # {"grad_norm", "clip_coef", "lr", "adamw_lr", ...}
    optimizer.zero_grad()
    optimizer.set_lr_scale(schedule(step))           # every group's base LR × scale
    torch.save(optimizer.state_dict(), path)         # world-size independent

The optimizer contract (`LagoonOptimizer`):

- ``step(max_grad_norm=None) -> dict[str, float]``: computes the global gradient norm (over every
  optimized parameter, across data-parallel ranks when distributed), clips to `max_grad_norm` if given,
  applies the update and returns at least ``grad_norm`` (before clipping), ``clip_coef``, ``lr`` and
  ``adamw_lr``. A non-finite gradient norm changes nothing and adds ``skipped = 1.0``.
- ``zero_grad(set_to_none=True)``.
- ``set_lr_scale(scale)``: η_t = scale · base LR for every group. Weight decay is decoupled and uses η_t
  (θ ← θ·(1 − η_t·λ)), never Muon's per-matrix update scale — "decoupled weight decay at the base
  learning rate" (Liu et al. 2025 §2.1; torch.optim.Muon).
- ``state_dict()`` / ``load_state_dict(state)``: full tensors keyed by parameter name — the same form
  for every world size and mode, so a run resumes on a different number of ranks. For distributed Muon
  both are collective calls (every rank must call them).
- ``reduces_gradients``: False for `LocalOptimizer` (single process, or every rank of a DDP-wrapped
  model); True for `DistributedMuon`, which reduces gradients itself (``ddp``) or works on FSDP2's
  sharded gradients (``fsdp2``) — then the training loop must not wrap the model in DDP.
- ``param_groups``: one dict per group (name, lr, base_lr, weight_decay, tensors, elements) for logging.

Also: `group_parameters(model, config)` (name-based routing with the exactly-once assert) and
`newton_schulz(G, steps, coefficients, dtype)` (batched over leading dimensions).
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn

from lagoon.optim.config import OptimConfig
from lagoon.optim.data_parallel import DataParallel
from lagoon.optim.handshake import check_same_plan, describe
from lagoon.optim.grouping import MatrixParam, ParameterGroups, check_partition, group_parameters
from lagoon.optim.newton_schulz import newton_schulz, newton_schulz_reference
from lagoon.optim.optimizer import LagoonOptimizer, LocalOptimizer


def build_optimizer(model: nn.Module, config: OptimConfig, data_parallel: DataParallel | None = None) -> LagoonOptimizer:
    """The optimizer `config` describes for `model`'s parameters.

    ``distributed = "none"``: a `LocalOptimizer` (wrap the model in DDP yourself when there are several
    ranks). ``"ddp"`` / ``"fsdp2"``: a `DistributedMuon` over `data_parallel` (default: the default process
    group); for ``"fsdp2"`` the model must already be sharded with `lagoon.optim.fsdp.shard_model`. A single
    process without a process group gets a `LocalOptimizer` in every mode. With several ranks, all ranks
    first check that they built the same plan (`lagoon.optim.handshake`).
    """
    groups = group_parameters(model, config)
    if data_parallel is None and config.distributed != "none":
        data_parallel = DataParallel.from_group()
    if data_parallel is not None:
        # Every rank must build the same plan before any collective runs; a mismatch fails here, clearly.
        shapes = [(name, tuple(param.shape)) for name, param in model.named_parameters()]
        check_same_plan(describe(config, shapes, config.distributed), data_parallel)
    single_process = data_parallel is None or (data_parallel.world_size == 1 and not dist.is_initialized())
    if config.distributed == "none" or single_process:
        # One process without a process group: the same Muon, the same state format (resumes either way).
        return LocalOptimizer(groups, config)
    from lagoon.optim.distributed import DistributedMuon

    return DistributedMuon(groups, config, data_parallel)


__all__ = [
    "DataParallel", "LagoonOptimizer", "LocalOptimizer", "MatrixParam", "OptimConfig", "ParameterGroups",
    "build_optimizer", "check_partition", "group_parameters", "newton_schulz", "newton_schulz_reference",
]
