"""The ``[parallel]`` section: how the ranks of a job hold the model.

    [parallel]
    dp_replicate = 1          # replica groups (HSDP's outer dimension)
    dp_shard = -1             # ranks each replica is sharded over (FSDP2); -1: every rank left
    activation_checkpointing = "selective"
    param_dtype = "bfloat16"  # compute copy of the weights; master weights stay float32

The layouts, for a world of W ranks (dp_replicate × dp_shard = W):

    dp_shard = 1              every rank holds the whole model (DDP, or distributed Muon's ``ddp`` mode)
    dp_replicate = 1          FSDP2: every parameter split over all W ranks
    both > 1                  HSDP: dp_replicate copies, each sharded over dp_shard ranks

Expert parallelism (``ep``) borrows from the data-parallel ranks as torchtitan does: within each replica,
dp_shard = dp_shard_mod_ep × ep, and the routed experts are FSDP-sharded over the remaining
dp_shard_mod_ep ranks. This build validates ``ep`` and refuses ep > 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lagoon.errors import check

CHECKPOINTING_MODES = ("none", "selective", "full")


@dataclass
class ParallelConfig:
    """The data-parallel layout, activation checkpointing and mixed precision of every trainer."""

    dp_replicate: int = -1
    """Replica groups: ranks that hold the same shard and average their gradients (HSDP's outer dimension,
    DDP when ``dp_shard = 1``). -1: every rank left after ``dp_shard`` (the default: pure data parallelism)."""

    dp_shard: int = 1
    """Ranks each replica's parameters, gradients and optimizer state are sharded over (FSDP2's
    ``fully_shard``; distributed Muon owns whole matrices within this group). -1: every rank left after
    ``dp_replicate``. 1 keeps every parameter whole on every rank."""

    ep: int = 1
    """Expert-parallel degree: ranks of the shard dimension the routed experts are split over (dp_shard =
    dp_shard_mod_ep × ep). Only 1 in this build."""

    activation_checkpointing: Literal["none", "selective", "full"] = "none"
    """Recompute activations in the backward pass instead of keeping them: ``full`` checkpoints every decoder
    block (only block inputs are kept); ``selective`` every other block (half the saving for about half the
    recompute — torchtitan's layer-wise selective policy); ``none`` keeps everything."""

    param_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the gathered (unsharded) parameters the forward and backward run in, in sharded layouts
    (FSDP2's MixedPrecisionPolicy). The sharded master weights and the optimizer state stay float32."""

    reduce_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype in which gradients are reduce-scattered (and all-reduced across replicas) in sharded layouts.
    float32 keeps the sum exact to fp32 rounding whatever the world size."""

    reshard_after_forward: bool = True
    """Sharded layouts: free each block's gathered parameters after its forward and gather them again for
    the backward (ZeRO-3); false keeps them until the backward (more memory, one all-gather fewer)."""

    def validate(self) -> None:
        for name in ("dp_replicate", "dp_shard"):
            value = getattr(self, name)
            check(value == -1 or value >= 1, name, f"must be a positive number of ranks or -1 (the rest), got {value}")
        check(not (self.dp_replicate == -1 and self.dp_shard == -1), "dp_shard",
              "dp_replicate and dp_shard cannot both be -1 (the rest of the world); give one of them a size")
        check(self.ep >= 1, "ep", f"must be >= 1, got {self.ep}")
        check(self.ep == 1, "ep", f"expert parallelism is not available in this build (got {self.ep}); set parallel.ep = 1")

    @property
    def sharded(self) -> bool:
        """Whether parameters are split over ranks (known without the world size unless dp_shard is -1)."""
        return self.dp_shard != 1
