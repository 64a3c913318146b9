"""Sharding a Laguna model with FSDP2 (``torch.distributed.fsdp.fully_shard``) for distributed Muon.

Each decoder layer is one FSDP2 unit (its parameters are all-gathered for its forward and backward, then
freed), and the root holds the embeddings, final norm and LM head. Every parameter is a DTensor sharded
on dim 0 (FSDP2's default), which is what distributed Muon's ``fsdp2`` mode expects: a 2-D matrix is
split by rows and travels to its owner for Newton–Schulz; an expert stack [E, ·, ·] is split by expert,
so every expert is whole on one rank and is orthogonalized there without communication.

The router's ``e_score_correction_bias`` is left out of FSDP2 (``ignored_params``): it is not trained by
gradients, and the aux-loss-free update changes it in place on every replica after each step.

Works on CPU with gloo and on CUDA with NCCL.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from lagoon.optim.data_parallel import DataParallel


def shard_model(model: nn.Module, data_parallel: DataParallel, device_type: str = "cpu") -> nn.Module:
    """Apply ``fully_shard`` to every decoder layer and to the root, in place; returns the model."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    group = data_parallel.group if data_parallel.group is not None else dist.group.WORLD
    mesh = DeviceMesh.from_group(group, device_type)
    frozen = {p for p in model.parameters() if not p.requires_grad}
    layers = getattr(getattr(model, "model", model), "layers", [])
    for layer in layers:
        fully_shard(layer, mesh=mesh, ignored_params={p for p in layer.parameters() if p in frozen} or None)
    fully_shard(model, mesh=mesh, ignored_params=frozen or None)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether `model`'s parameters are FSDP2 DTensors."""
    return any(hasattr(p, "to_local") for p in model.parameters())


@torch.no_grad()
def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer as a full (unsharded) tensor on every rank (a collective).

    A whole copy per rank: for tests that compare a sharded run with a single-process one at small shapes. No
    trainer path calls it (evaluation runs the sharded model; publishing and export stream tensor by tensor)."""
    return {name: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()
            for name, t in model.state_dict().items()}


@torch.no_grad()
def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into a sharded model: each rank keeps its own rows."""
    from torch.distributed.tensor import distribute_tensor

    for name, target in model.state_dict().items():
        if name not in state:  # a tied LM head is stored once, as the embedding
            continue
        source = state[name]
        if hasattr(target, "to_local"):
            local = distribute_tensor(source.to(target.dtype), target.device_mesh, target.placements).to_local()
            target.to_local().copy_(local)
        else:
            target.copy_(source)
