"""Full tensors of a (possibly sharded) model, one at a time, on rank 0, in a chosen dtype.

    for name, tensor in full_tensors(model, torch.bfloat16, mesh):   # every rank iterates; rank 0 gets tensors
        if tensor is not None:
            send(name, tensor)

This is the collective a sharded trainer publishes weights with (RL) and exports with: each shard is cast
to the publish dtype first (half the bytes for bf16), then gathered to rank 0 over the shard group; only
the first replica group takes part (the others hold the same values). At any moment rank 0 holds one full
tensor, never the model. Names are lagoon's runtime names; a tied LM head appears once, as the embedding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from lagoon.parallel.load import model_tensors
from lagoon.parallel.mesh import Mesh


def _gather_rows(local: torch.Tensor, rows: int, group: dist.ProcessGroup, dst_first: bool) -> torch.Tensor | None:
    """Dim-0 shards (torch.chunk sizes, as FSDP2's Shard(0)) → the full tensor on the group's first rank."""
    W = dist.get_world_size(group)
    size = math.ceil(rows / W)
    padded = torch.zeros((size, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    pieces = [torch.empty_like(padded) for _ in range(W)] if dst_first else None
    dist.gather(padded, pieces, group_dst=0, group=group)
    return torch.cat(pieces)[:rows] if dst_first else None


@torch.no_grad()
def full_tensors(model: nn.Module, dtype: torch.dtype | None, mesh: Mesh | None = None,
                 device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor | None]]:
    """(name, full tensor on rank 0 / None elsewhere) for every stored tensor, in model order (a collective
    under sharding: every rank must iterate to the end)."""
    rank = 0 if mesh is None else mesh.rank
    for name, tensor in model_tensors(model).items():
        cast = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        if not hasattr(tensor, "device_mesh"):
            yield name, tensor.detach().to(device=device, dtype=cast) if rank == 0 else None
            continue
        assert mesh is not None and mesh.shard_group is not None, "a DTensor parameter needs the engine's mesh"
        coordinate = mesh.mesh.get_coordinate()
        if coordinate[0] != 0:           # another replica group: rank 0's group holds the same values
            yield name, None
            continue
        local = tensor.to_local().detach().to(cast)
        full = _gather_rows(local, tensor.shape[0], mesh.shard_group, coordinate[1] == 0)
        yield name, full.to(device) if rank == 0 and full is not None else None


def gathered_model(model: nn.Module, mesh: Mesh | None, dtype: torch.dtype | None = None) -> nn.Module | None:
    """A plain copy of a sharded model on rank 0 (None elsewhere), filled tensor by tensor (a collective).

    For consumers that still take a whole model object (`lagoon.weights.WeightPublisher`): rank 0 holds
    one full copy, in `dtype`, while it publishes; the gather itself never holds more than one tensor extra."""
    from lagoon.model import LagunaForCausalLM
    from lagoon.parallel.materialize import materialize

    copy = None
    if mesh is None or mesh.rank == 0:
        with torch.device("meta"):
            copy = LagunaForCausalLM(model.config)
        if dtype is not None:
            copy.to(dtype)
        materialize(copy, "cpu")
        targets = copy.state_dict()
    for name, tensor in full_tensors(model, dtype, mesh):
        if tensor is not None:
            targets[name].copy_(tensor)
    return copy
