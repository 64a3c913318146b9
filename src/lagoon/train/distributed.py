"""Data-parallel setup: one process per rank under torchrun (gloo on CPU, NCCL on CUDA), or none at all.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; lagoon reads them, picks the
device (``cuda:LOCAL_RANK`` when CUDA is available and allowed, else CPU) and the matching backend.
A process group that already exists (a caller initialised it) is used as is and left open at the end.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lagoon.errors import LagoonError


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    group: dist.ProcessGroup | None
    """The data-parallel group (None when single-process)."""
    owns_group: bool
    """Whether lagoon initialised the default group (and so must destroy it)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.group is not None:
            dist.barrier(group=self.group)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def pick_device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise LagoonError("train.device is \"cuda\" but torch sees no CUDA device; use \"auto\" or \"cpu\"")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device_choice: str) -> Distributed:
    """Join the torchrun world if there is one; otherwise a single process on the chosen device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        device = pick_device(device_choice, local_rank)
        world_size, rank = dist.get_world_size(), dist.get_rank()
        return Distributed(rank, world_size, local_rank, device, dist.group.WORLD if world_size > 1 else None, False)
    device = pick_device(device_choice, local_rank)
    if world_size == 1:
        return Distributed(0, 1, 0, device, None, False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=30),
                            device_id=device if device.type == "cuda" else None)
    return Distributed(rank, world_size, local_rank, device, dist.group.WORLD, True)


def all_sum(values: list[float], dist_info: Distributed, device: torch.device) -> list[float]:
    """Sum a few float64 scalars over ranks in one collective."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist_info.group is not None:
        dist.all_reduce(tensor, group=dist_info.group)
    return tensor.tolist()


def all_max(value: float, dist_info: Distributed, device: torch.device) -> float:
    """The largest `value` over ranks."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    if dist_info.group is not None:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=dist_info.group)
    return tensor.item()


def gather_objects(obj, dist_info: Distributed) -> list | None:
    """Every rank's `obj` on rank 0 (None elsewhere); [obj] when single-process."""
    if dist_info.group is None:
        return [obj]
    out = [None] * dist_info.world_size if dist_info.is_main else None
    dist.gather_object(obj, out, dst=0, group=dist_info.group)
    return out


def broadcast_object(obj, dist_info: Distributed):
    """Rank 0's `obj` on every rank."""
    if dist_info.group is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=dist_info.group)
    return box[0]
