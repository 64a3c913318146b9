"""Who the data-parallel peers are: the process group, this rank and the world size."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class DataParallel:
    """The data-parallel process group the optimizer spans (``group=None`` means the default group)."""

    group: dist.ProcessGroup | None = None
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_group(cls, group: dist.ProcessGroup | None = None) -> "DataParallel":
        """This process's place in `group` (the default group when None); a single process if not initialized."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(group=group, rank=dist.get_rank(group), world_size=dist.get_world_size(group))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1
