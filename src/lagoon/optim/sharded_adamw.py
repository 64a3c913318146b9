"""AdamW whose state is split across data-parallel ranks: ZeRO-1 for replicated parameters, per-shard for FSDP2.

`FlatShardedAdamW` (DDP mode; Rajbhandari et al. 2020, "ZeRO", stage 1): the AdamW parameters are laid
end to end in one flat vector, padded to a multiple of W; rank r owns elements [r·S, (r+1)·S). Gradients
are reduce-scattered (each rank receives the sum of its slice), the rank updates its slice with its slice
of the moments, and the updated slices are all-gathered back into every replica.

`LocalShardAdamW` (FSDP2 mode): parameters are already DTensors sharded on dim 0, gradients already
reduced by FSDP2; each rank updates its local rows with moments of the same local shape. No communication.

Both keep 1/W of AdamW's state per rank; AdamW is elementwise, so the result equals unsharded AdamW.
Shape legend: S elements of one rank's flat slice.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from lagoon.optim.data_parallel import DataParallel
from lagoon.optim.functional import adamw_update
from lagoon.optim.ownership import shard_rows


class FlatShardedAdamW:
    """ZeRO-1 AdamW over replicated parameters: `decayed` then `undecayed`, one flat vector."""

    def __init__(self, decayed: list[tuple[str, nn.Parameter]], undecayed: list[tuple[str, nn.Parameter]],
                 data_parallel: DataParallel):
        self.entries = decayed + undecayed
        self.dp = data_parallel
        self.decayed_elements = sum(p.numel() for _, p in decayed)
        self.total = sum(p.numel() for _, p in self.entries)
        dtypes = {p.dtype for _, p in self.entries}
        assert len(dtypes) <= 1, f"AdamW parameters must share one dtype for the flat shard, got {dtypes}"
        self.dtype = dtypes.pop() if dtypes else torch.float32
        self.device = self.entries[0][1].device if self.entries else torch.device("cpu")
        W = data_parallel.world_size
        self.shard = math.ceil(self.total / W) if self.total else 0
        self.start = data_parallel.rank * self.shard
        self.exp_avg_S = torch.zeros(self.shard, dtype=self.dtype, device=self.device)
        self.exp_avg_sq_S = torch.zeros(self.shard, dtype=self.dtype, device=self.device)

    def _flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        flat = torch.empty(self.shard * self.dp.world_size, dtype=self.dtype, device=self.device)
        flat[self.total :].zero_()
        if tensors:
            torch.cat([t.reshape(-1) for t in tensors], out=flat[: self.total])
        return flat

    def _slice(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Elements [start, start + S) of the flat concatenation of `tensors` (zero past the end)."""
        out = torch.zeros(self.shard, dtype=self.dtype, device=self.device)
        offset, stop = 0, self.start + self.shard
        for tensor in tensors:
            size = tensor.numel()
            low, high = max(offset, self.start), min(offset + size, stop)
            if low < high:
                out[low - self.start : high - self.start] = tensor.reshape(-1)[low - offset : high - offset]
            offset += size
        return out

    def start_reduce(self) -> tuple[torch.Tensor, dist.Work | None]:
        """Issue the reduce-scatter of the summed gradients; returns (this rank's slice, its work handle)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self.entries]
        out_S = torch.empty(self.shard, dtype=self.dtype, device=self.device)
        if not self.entries:
            return out_S, None
        work = dist.reduce_scatter_single(out_S, self._flat(grads), group=self.dp.group, async_op=True)
        return out_S, work

    def update(self, grad_S: torch.Tensor, *, step: int, lr: float, betas: tuple[float, float], eps: float,
               weight_decay: float) -> torch.Tensor:
        """AdamW on this rank's slice; returns the updated parameter slice."""
        params_S = self._slice([p.detach() for _, p in self.entries])
        # The slice may straddle the decayed / undecayed boundary: update each part with its own decay.
        split = min(max(self.decayed_elements - self.start, 0), self.shard)
        for piece, decay in ((slice(0, split), weight_decay), (slice(split, self.shard), 0.0)):
            if piece.stop > piece.start:
                adamw_update([params_S[piece]], [grad_S[piece]], [self.exp_avg_S[piece]], [self.exp_avg_sq_S[piece]],
                             step=step, lr=lr, betas=betas, eps=eps, weight_decay=decay)
        return params_S

    def start_gather(self, params_S: torch.Tensor) -> tuple[torch.Tensor, dist.Work | None]:
        flat = torch.empty(self.shard * self.dp.world_size, dtype=self.dtype, device=self.device)
        if not self.entries:
            return flat, None
        return flat, dist.all_gather_single(flat, params_S, group=self.dp.group, async_op=True)

    def finish(self, flat: torch.Tensor) -> None:
        """Copy the all-gathered parameters back into every parameter."""
        offset = 0
        for _, param in self.entries:
            param.detach().copy_(flat[offset : offset + param.numel()].view_as(param))
            offset += param.numel()

    # ---------------------------------------------------------------------------------------------
    def full_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every parameter's full moments (a collective)."""
        out: dict[str, dict[str, torch.Tensor]] = {name: {} for name, _ in self.entries}
        for key, slice_S in (("exp_avg", self.exp_avg_S), ("exp_avg_sq", self.exp_avg_sq_S)):
            flat = torch.empty(self.shard * self.dp.world_size, dtype=self.dtype, device=self.device)
            if self.entries:
                dist.all_gather_single(flat, slice_S, group=self.dp.group)
            offset = 0
            for name, param in self.entries:
                out[name][key] = flat[offset : offset + param.numel()].view(param.shape).cpu().clone()
                offset += param.numel()
        return out

    def load_full_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for key, slice_S in (("exp_avg", self.exp_avg_S), ("exp_avg_sq", self.exp_avg_sq_S)):
            slice_S.copy_(self._slice([state[name][key].to(self.device, self.dtype) for name, _ in self.entries]))


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The rank-local part of a DTensor (a view that updates the parameter in place), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def gather_rows(local: torch.Tensor, rows: int, data_parallel: DataParallel) -> torch.Tensor:
    """The full tensor from every rank's dim-0 shard (torch.chunk sizes), padding uneven shards (a collective)."""
    W = data_parallel.world_size
    size = math.ceil(rows / W)
    padded = torch.zeros((size, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    out = torch.empty((size * W, *local.shape[1:]), dtype=local.dtype, device=local.device)
    dist.all_gather_single(out, padded, group=data_parallel.group)
    return out[:rows].clone()


class LocalShardAdamW:
    """AdamW on each rank's FSDP2 shards (dim-0 rows); moments have the local shape."""

    def __init__(self, decayed: list[tuple[str, nn.Parameter]], undecayed: list[tuple[str, nn.Parameter]],
                 data_parallel: DataParallel):
        self.groups = ((decayed, True), (undecayed, False))
        self.entries = decayed + undecayed
        self.dp = data_parallel
        self.exp_avg = {name: torch.zeros_like(local_tensor(p)) for name, p in self.entries}
        self.exp_avg_sq = {name: torch.zeros_like(local_tensor(p)) for name, p in self.entries}

    def local_grads(self) -> dict[str, torch.Tensor]:
        return {name: local_tensor(p.grad) if p.grad is not None else torch.zeros_like(local_tensor(p))
                for name, p in self.entries}

    def update(self, grads: dict[str, torch.Tensor], *, step: int, lr: float, betas: tuple[float, float], eps: float,
               weight_decay: float) -> None:
        for members, decays in self.groups:
            adamw_update([local_tensor(p).detach() for _, p in members], [grads[n] for n, _ in members],
                         [self.exp_avg[n] for n, _ in members], [self.exp_avg_sq[n] for n, _ in members],
                         step=step, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay if decays else 0.0)

    def full_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: {"exp_avg": gather_rows(self.exp_avg[name], p.shape[0], self.dp).view(p.shape).cpu(),
                       "exp_avg_sq": gather_rows(self.exp_avg_sq[name], p.shape[0], self.dp).view(p.shape).cpu()}
                for name, p in self.entries}

    def load_full_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, param in self.entries:
            start, stop = shard_rows(param.shape[0], self.dp.world_size, self.dp.rank)
            self.exp_avg[name].copy_(state[name]["exp_avg"][start:stop].reshape(self.exp_avg[name].shape))
            self.exp_avg_sq[name].copy_(state[name]["exp_avg_sq"][start:stop].reshape(self.exp_avg_sq[name].shape))
