"""Full tensors of a (possibly sharded) model, one at a time, on rank 0, in a chosen dtype and the fixed order.

    for name, tensor in full_tensors(model, torch.bfloat16, mesh):   # every rank iterates; rank 0 gets tensors
        if tensor is not None:
            send(name, tensor)

    record = on_rank0(lambda pairs: publisher.publish(pairs, version, config=model.config), model, dtype, mesh)

This is the collective a sharded trainer publishes weights with (RL): each shard is cast to the publish dtype
first (half the bytes for bf16; `lagoon.weights.tensors.publish_dtype`), then gathered to rank 0 over the
shard group; only the first replica group takes part (the others hold the same values). The order is the
fixed one every transfer and digest walks (`lagoon.weights.tensors`: sorted runtime names, a tied LM head left
out), so the pairs feed `WeightPublisher.publish` as they arrive. At any moment rank 0 holds one full tensor,
never the model.

`on_rank0` is the safe way to consume the stream: whatever rank 0's consumer does — finish, stop early or
fail — every rank iterates the collective to its end, then all ranks learn rank 0's outcome and raise the
same error together, so none is left waiting in a gather.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from lagoon.errors import LagoonError
from lagoon.parallel.load import model_tensors
from lagoon.parallel.materialize import local_region
from lagoon.parallel.mesh import Mesh

T = TypeVar("T")


def _gather_rows(local: torch.Tensor, rows: int, start: int, group: dist.ProcessGroup, dst_first: bool
                 ) -> torch.Tensor | None:
    """Dim-0 shards → the full tensor on the group's first rank. Each rank's rows [start, start + len(local))
    travel with it: FSDP2 alone holds them in rank order, but FSDP2 over expert parallelism splits each EP
    rank's experts again, so the shard group's ranks hold contiguous experts out of rank order. Either way
    every rank holds at most ⌈rows / W⌉ rows (torch.chunk sizes, chunked once or twice)."""
    W = dist.get_world_size(group)
    size = math.ceil(rows / W)
    assert local.shape[0] <= size, (local.shape, rows, W)
    padded = torch.zeros((size, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    where = torch.tensor([start, local.shape[0]], dtype=torch.int64, device=local.device)
    pieces = [torch.empty_like(padded) for _ in range(W)] if dst_first else None
    places = [torch.empty_like(where) for _ in range(W)] if dst_first else None
    dist.gather(padded, pieces, group_dst=0, group=group)
    dist.gather(where, places, group_dst=0, group=group)
    if not dst_first:
        return None
    full = torch.empty((rows, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for piece, place in zip(pieces, places):
        first, count = place.tolist()
        full[first : first + count] = piece[:count]
    return full


@torch.no_grad()
def full_tensors(model: nn.Module, dtype: torch.dtype | None, mesh: Mesh | None = None,
                 device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor | None]]:
    """(name, full tensor on rank 0 / None elsewhere) for every stored tensor in the fixed order, each in
    ``publish_dtype(name, ·, dtype)`` (a collective under sharding: every rank must iterate to the end)."""
    from lagoon.weights.tensors import publish_dtype

    rank = 0 if mesh is None else mesh.rank
    tensors = model_tensors(model)
    for name in sorted(tensors):
        tensor = tensors[name]
        cast = publish_dtype(name, tensor.dtype, dtype)
        if not hasattr(tensor, "device_mesh"):
            yield name, tensor.detach().to(device=device, dtype=cast) if rank == 0 else None
            continue
        assert mesh is not None and mesh.shard_group is not None, "a DTensor parameter needs the engine's mesh"
        coordinate = mesh.mesh.get_coordinate()
        if coordinate[0] != 0:           # another replica group: rank 0's group holds the same values
            yield name, None
            continue
        local = tensor.to_local().detach().to(cast)
        start = local_region(tensor)[0].start
        full = _gather_rows(local, tensor.shape[0], start, mesh.shard_group, coordinate[1] == 0)
        yield name, full.to(device) if rank == 0 and full is not None else None


def on_rank0(consume: Callable[[Iterator[tuple[str, torch.Tensor]]], T], model: nn.Module,
             dtype: torch.dtype | None, mesh: Mesh | None = None) -> T | None:
    """``consume(pairs)`` on rank 0 over `full_tensors` (its result there, None elsewhere); a collective.

    Every rank iterates the stream to its end whatever `consume` did, then rank 0's failure (if any) is
    broadcast: rank 0 re-raises its own exception, the others raise a `LagoonError` quoting it."""
    rank = 0 if mesh is None else mesh.rank
    pairs = full_tensors(model, dtype, mesh)
    result, error = None, None
    if rank == 0:
        try:
            result = consume(pairs)
        except Exception as caught:   # noqa: BLE001 - re-raised below, after the collective has ended
            error = caught
    for _ in pairs:   # the other ranks' whole share of the collective; what rank 0's consumer left unread
        pass
    message = None if error is None else str(error) or type(error).__name__
    if mesh is not None and mesh.mesh is not None:
        box = [message]
        dist.broadcast_object_list(box, src=0, group=mesh.world_group)
        message = box[0]
    if error is not None:
        raise error
    if message is not None:
        raise LagoonError(f"trainer rank 0 failed while the weights streamed to it: {message}")
    return result
