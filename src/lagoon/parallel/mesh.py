"""One device mesh for the job: named dimensions ``dp_replicate × dp_shard``, built from the world size.

    dims = ParallelDims.resolve(config.parallel, world_size=8)     # e.g. dp_replicate=2, dp_shard=4
    mesh = build_mesh(dims, "cuda")                                  # NCCL on CUDA, gloo on CPU: same code
    mesh.shard_group        # the ranks this rank's replica is sharded over (distributed Muon's group)
    mesh.replicate_group    # the ranks holding the same shard (SDC compares these)

Rank r sits at (r // dp_shard, r % dp_shard): the shard dimension is the inner, contiguous one, so on a
GPU node the shard group is the node's NVLink domain and only the small replica all-reduce crosses nodes
(torchtitan's ParallelDims uses the same order). Expert parallelism, when it arrives, splits the shard
dimension again (dp_shard = dp_shard_mod_ep × ep) and adds a 1-D ``ep`` submesh; nothing here changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from lagoon.errors import ConfigError
from lagoon.parallel.config import ParallelConfig

REPLICATE, SHARD = "dp_replicate", "dp_shard"


@dataclass(frozen=True)
class ParallelDims:
    """The resolved sizes of the mesh's dimensions for one world size."""

    dp_replicate: int
    dp_shard: int
    ep: int = 1

    @classmethod
    def resolve(cls, config: ParallelConfig, world_size: int) -> "ParallelDims":
        """Fill in -1 and check that the layout covers exactly `world_size` ranks (one-line ConfigError)."""
        replicate, shard = config.dp_replicate, config.dp_shard
        if replicate == -1:
            if world_size % shard:
                raise ConfigError("parallel.dp_shard", f"{shard} does not divide the world size {world_size}")
            replicate = world_size // shard
        elif shard == -1:
            if world_size % replicate:
                raise ConfigError("parallel.dp_replicate", f"{replicate} does not divide the world size {world_size}")
            shard = world_size // replicate
        if replicate * shard != world_size:
            raise ConfigError("parallel", f"dp_replicate ({replicate}) × dp_shard ({shard}) = {replicate * shard} "
                                          f"ranks, but the world has {world_size}; set one of them to -1 (the rest)")
        if shard % config.ep:
            raise ConfigError("parallel.ep", f"{config.ep} does not divide dp_shard ({shard})")
        return cls(replicate, shard, config.ep)

    @property
    def world_size(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def sharded(self) -> bool:
        return self.dp_shard > 1

    @property
    def layout(self) -> str:
        """``single``, ``ddp``, ``fsdp`` or ``hsdp``."""
        if self.world_size == 1:
            return "single"
        if not self.sharded:
            return "ddp"
        return "hsdp" if self.dp_replicate > 1 else "fsdp"

    def describe(self) -> str:
        return f"{self.layout} (dp_replicate={self.dp_replicate} × dp_shard={self.dp_shard})"


@dataclass
class Mesh:
    """The job's device mesh and the process groups cut from it (all None in a single process)."""

    dims: ParallelDims
    device_type: str
    mesh: Any = None
    """The 2-D DeviceMesh [dp_replicate, dp_shard] (None in a single process)."""
    rank: int = 0

    @property
    def shard_mesh(self) -> Any:
        """The 1-D submesh of the shard dimension (what a pure-FSDP fully_shard spans)."""
        return None if self.mesh is None else self.mesh[SHARD]

    @property
    def fsdp_mesh(self) -> Any:
        """What ``fully_shard`` spans: the 2-D mesh under HSDP, the shard submesh under FSDP."""
        if self.mesh is None:
            return None
        return self.mesh[(REPLICATE, SHARD)] if self.dims.dp_replicate > 1 else self.mesh[SHARD]

    @property
    def shard_group(self) -> dist.ProcessGroup | None:
        return None if self.mesh is None or self.dims.dp_shard == 1 else self.mesh.get_group(SHARD)

    @property
    def replicate_group(self) -> dist.ProcessGroup | None:
        return None if self.mesh is None or self.dims.dp_replicate == 1 else self.mesh.get_group(REPLICATE)

    @property
    def world_group(self) -> dist.ProcessGroup | None:
        return None if self.mesh is None else dist.group.WORLD


def build_mesh(dims: ParallelDims, device_type: str) -> Mesh:
    """The DeviceMesh for `dims` over the initialised default process group (none in a single process)."""
    if dims.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        assert dims.world_size == 1, f"{dims} needs an initialised process group"
        return Mesh(dims, device_type)
    from torch.distributed.device_mesh import init_device_mesh

    assert dist.get_world_size() == dims.world_size, (dist.get_world_size(), dims)
    mesh = init_device_mesh(device_type, (dims.dp_replicate, dims.dp_shard), mesh_dim_names=(REPLICATE, SHARD))
    return Mesh(dims, device_type, mesh, dist.get_rank())
