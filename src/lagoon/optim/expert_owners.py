"""Who orthogonalizes an expert-parallel expert's matrices in distributed Muon's ``ddp`` mode, and where a
sharded expert stack's rows live (both modes).

Under expert parallelism (`lagoon.parallel.expert`) an expert stack is a ``Shard(0)`` DTensor over a 1-D
mesh of P ranks: the rank at mesh position c holds experts [c·E/P, (c+1)·E/P) whole, and its gradient
already sums the contributions of every token its expert-parallel group routed there.

- P = W: every expert lives on exactly one rank, which owns its matrices — momentum and Newton–Schulz
  there, batched per shape, with no communication at all.
- P < W: the W/P ranks at the same mesh position (the position's *replicas*) hold the same experts and
  routed different tokens. Their gradients are reduce-scattered within the replicas to owners chosen among
  them (longest-processing-time first, as every other matrix) and the updates all-gathered back: distributed
  Muon's own ``ddp`` scheme on the replica group, so each expert matrix is still orthogonalized once and
  its momentum kept once in the job.

Every position holds blocks of the same shapes, so every position assigns them alike; the expert blocks'
global owners then enter the owner assignment of the other matrices as fixed load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from lagoon.optim.data_parallel import DataParallel
from lagoon.optim.grouping import MatrixParam
from lagoon.optim.ownership import Block, assign_owners


def is_expert_parallel(param: torch.Tensor) -> bool:
    """Whether `param` is an expert stack laid out by `lagoon.parallel.expert` (3-D, ``Shard(0)`` on a 1-D mesh)."""
    from torch.distributed.tensor import Shard

    if not hasattr(param, "device_mesh") or param.dim() != 3:
        return False
    return param.device_mesh.ndim == 1 and tuple(param.placements) == (Shard(0),)


@dataclass(frozen=True)
class ExpertReplicas:
    """Where this rank sits in the expert-parallel layout, seen from the data-parallel group."""

    position: int
    """This rank's coordinate on the expert-parallel mesh (it holds experts [position·E/P, (position+1)·E/P))."""
    size: int
    """P, the expert-parallel degree."""
    members: list[list[int]]
    """members[c]: the data-parallel ranks at position c, ascending (W/P of them)."""
    group: DataParallel
    """The ranks holding this rank's experts (world_size 1 when P = W: no communication)."""


def find_replicas(param: torch.Tensor, data_parallel: DataParallel) -> ExpertReplicas:
    """The replica layout of expert-parallel `param` (a collective over the default group when P < W)."""
    mesh = param.device_mesh
    P, W = mesh.size(), data_parallel.world_size
    position = mesh.get_local_rank()
    everyone: list[int] = [0] * W
    dist.all_gather_object(everyone, position, group=data_parallel.group)
    members = [[r for r in range(W) if everyone[r] == c] for c in range(P)]
    assert all(len(m) == W // P for m in members), f"uneven expert-parallel layout {everyone}"
    if W == P:
        return ExpertReplicas(position, P, members, DataParallel(None, 0, 1))

    def global_rank(r: int) -> int:
        return r if data_parallel.group is None else dist.get_global_rank(data_parallel.group, r)

    # new_group is collective over the default group: every rank creates every position's group, in order.
    groups = [dist.new_group([global_rank(r) for r in ranks]) for ranks in members]
    mine = members[position]
    return ExpertReplicas(position, P, members, DataParallel(groups[position], mine.index(data_parallel.rank), len(mine)))


def expert_owners(matrices: list[MatrixParam], expert_params: list[int], replicas: ExpertReplicas
                  ) -> tuple[dict[Block, int], dict[Block, int]]:
    """(the data-parallel owner of every expert block, by global matrix index; this rank's local expert blocks →
    the index of their owner among its replicas)."""
    local: list[Block] = []
    for p in expert_params:
        matrix = matrices[p]
        local += [Block(p, i, matrix.rows, matrix.cols) for i in range(matrix.count // replicas.size)]
    local_owner = assign_owners(local, replicas.group.world_size)
    fixed: dict[Block, int] = {}
    for position, members in enumerate(replicas.members):
        for block, owner in local_owner.items():
            per_position = matrices[block.param].count // replicas.size
            fixed[Block(block.param, position * per_position + block.index, block.rows, block.cols)] = members[owner]
    return fixed, local_owner


def local_rows(param: torch.Tensor) -> tuple[int, int]:
    """Rows [start, stop) of dim 0 this rank holds of a DTensor sharded on dim 0 — any mesh, e.g. FSDP2 over
    expert parallelism, where a rank's experts are contiguous but not in rank order."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return offset[0], offset[0] + shape[0]


def full_from_local(local: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The full tensor whose ``Shard(0)`` pieces (laid out as `param`) are every rank's `local` (a collective)."""
    from torch.distributed.tensor import DTensor

    shard = DTensor.from_local(local, param.device_mesh, param.placements, run_check=False, shape=param.shape,
                               stride=param.stride())
    return shard.full_tensor()
