"""Moving a bucket's matrices to their owners and the orthogonalized updates back.

`DDPTransport` (replicated parameters): gradients go to owners with one reduce-scatter per bucket — the
input is laid out as W owner segments [W·M, R, C], so each rank receives the sum of exactly the blocks it
owns — and updates come back with one all-gather of the owners' [M, R, C] segments.

`FSDPTransport` (dim-0 sharded DTensors): rank q holds rows [q·s, (q+1)·s) of every 2-D matrix. One
all-to-all sends each owner the row shards of its blocks ([W, M, s, C], uneven shards zero-padded to s
rows); the owner stacks them into full matrices; a second all-to-all returns each rank its rows of the
updates.

All collectives are asynchronous (``async_op=True``); the caller waits on the returned work handle.
Shape legend as in `lagoon.optim.distributed`.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from lagoon.optim.data_parallel import DataParallel
from lagoon.optim.grouping import MatrixParam
from lagoon.optim.ownership import Bucket, shard_rows
from lagoon.optim.sharded_adamw import local_tensor


def _grad_or_zeros(tensor: torch.Tensor) -> torch.Tensor:
    grad = tensor.grad
    return local_tensor(grad) if grad is not None else torch.zeros_like(local_tensor(tensor))


class _Transport:
    def __init__(self, matrices: list[MatrixParam], data_parallel: DataParallel, update_dtype: torch.dtype):
        self.matrices = matrices
        self.dp = data_parallel
        self.update_dtype = update_dtype
        # Buffers live where the parameters do (CPU with gloo, the rank's GPU with NCCL).
        self.device = local_tensor(matrices[0].param).device if matrices else torch.device("cpu")
        self._per_param: dict[int, dict] = {}

    def per_param(self, bucket: Bucket) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        key = id(bucket)
        if key not in self._per_param:
            self._per_param[key] = {p: (indices.to(self.device), slots.to(self.device))
                                    for p, (indices, slots) in bucket.per_param().items()}
        return self._per_param[key]

    def gather_segments(self, bucket: Bucket, segment_mRC: torch.Tensor) -> torch.Tensor:
        """Every owner's segment, [W·M, R, C] (a blocking collective; used for full state dicts)."""
        padded_MRC = torch.zeros((bucket.slots, bucket.rows, bucket.cols), dtype=segment_mRC.dtype, device=self.device)
        padded_MRC[: segment_mRC.shape[0]] = segment_mRC
        out = torch.empty((bucket.world_size * bucket.slots, bucket.rows, bucket.cols), dtype=segment_mRC.dtype,
                          device=self.device)
        dist.all_gather_single(out, padded_MRC, group=self.dp.group)
        return out


class DDPTransport(_Transport):
    def start_to_owners(self, bucket: Bucket) -> tuple[torch.Tensor, dist.Work]:
        """Reduce-scatter: returns (the summed gradients of this rank's slots [M, R, C], work)."""
        first = self.matrices[next(b for segment in bucket.segments for b in segment).param].param
        send = torch.empty((bucket.world_size * bucket.slots, bucket.rows, bucket.cols), dtype=first.dtype,
                           device=self.device)
        for rank, segment in enumerate(bucket.segments):  # only the padding slots need zeros
            send[rank * bucket.slots + len(segment) : (rank + 1) * bucket.slots].zero_()
        for p, (indices, slots) in self.per_param(bucket).items():
            matrix = self.matrices[p]
            grad = _grad_or_zeros(matrix.param).view(matrix.count, matrix.rows, matrix.cols)
            send.index_copy_(0, slots, grad.index_select(0, indices))
        received = torch.empty((bucket.slots, bucket.rows, bucket.cols), dtype=first.dtype, device=self.device)
        return received, dist.reduce_scatter_single(received, send, group=self.dp.group, async_op=True)

    def start_to_all(self, bucket: Bucket, updates_mRC: torch.Tensor) -> tuple[torch.Tensor, dist.Work]:
        """All-gather the owners' updates: returns ([W·M, R, C] in the Newton–Schulz dtype, work)."""
        send = torch.zeros((bucket.slots, bucket.rows, bucket.cols), dtype=self.update_dtype, device=self.device)
        send[: updates_mRC.shape[0]] = updates_mRC
        received = torch.empty((bucket.world_size * bucket.slots, bucket.rows, bucket.cols), dtype=self.update_dtype,
                               device=self.device)
        return received, dist.all_gather_single(received, send, group=self.dp.group, async_op=True)

    def apply(self, bucket: Bucket, updates_WMRC: torch.Tensor, alpha: float) -> None:
        """θ += alpha·O for every block of the bucket (every replica does the same)."""
        for p, (indices, slots) in self.per_param(bucket).items():
            matrix = self.matrices[p]
            blocks = matrix.param.detach().view(matrix.count, matrix.rows, matrix.cols)
            blocks.index_add_(0, indices, updates_WMRC.index_select(0, slots).to(blocks.dtype), alpha=alpha)


class FSDPTransport(_Transport):
    def local_grad(self, p: int) -> torch.Tensor:
        return _grad_or_zeros(self.matrices[p].param)

    def _shard(self, bucket: Bucket) -> int:
        return math.ceil(bucket.rows / bucket.world_size)

    def start_to_owners(self, bucket: Bucket, local_grads: dict[int, torch.Tensor]) -> tuple[torch.Tensor, dist.Work]:
        """All-to-all: each owner receives every rank's row shard of its blocks, [W(source), M, s, C]."""
        W, s = bucket.world_size, self._shard(bucket)
        dtype = local_grads[next(b for seg in bucket.segments for b in seg).param].dtype
        send = torch.zeros((W, bucket.slots, s, bucket.cols), dtype=dtype, device=self.device)
        for owner, segment in enumerate(bucket.segments):
            for i, block in enumerate(segment):
                assert self.matrices[block.param].count == 1, "only 2-D matrices travel under FSDP2"
                rows = local_grads[block.param]
                send[owner, i, : rows.shape[0]] = rows
        received = torch.empty_like(send)
        return received, dist.all_to_all_single(received, send, group=self.dp.group, async_op=True)

    def assemble(self, bucket: Bucket, received_WMsC: torch.Tensor) -> torch.Tensor:
        """This rank's owned blocks as full matrices [m, R, C]."""
        W, s, owned = bucket.world_size, self._shard(bucket), len(bucket.segments[self.dp.rank])
        full = received_WMsC[:, :owned].permute(1, 0, 2, 3).reshape(owned, W * s, bucket.cols)
        return full[:, : bucket.rows].contiguous()

    def start_to_all(self, bucket: Bucket, updates_mRC: torch.Tensor,
                     dtype: torch.dtype | None = None) -> tuple[torch.Tensor, dist.Work]:
        """All-to-all back: each rank receives its rows of every block's update, [W(owner), M, s, C], in the
        Newton–Schulz dtype (or `dtype`: the momentum's, when a sharded state dict sends momenta home)."""
        W, s = bucket.world_size, self._shard(bucket)
        padded = torch.zeros((bucket.slots, W * s, bucket.cols), dtype=dtype or self.update_dtype, device=self.device)
        padded[: updates_mRC.shape[0], : bucket.rows] = updates_mRC
        send = padded.view(bucket.slots, W, s, bucket.cols).permute(1, 0, 2, 3).contiguous()
        received = torch.empty_like(send)
        return received, dist.all_to_all_single(received, send, group=self.dp.group, async_op=True)

    def apply(self, bucket: Bucket, updates_WMsC: torch.Tensor, alpha: float) -> None:
        for owner, segment in enumerate(bucket.segments):
            for i, block in enumerate(segment):
                local = local_tensor(self.matrices[block.param].param).detach()
                start, stop = shard_rows(bucket.rows, bucket.world_size, self.dp.rank)
                assert local.shape[0] == stop - start, (local.shape, start, stop)
                local.add_(updates_WMsC[owner, i, : stop - start].to(local.dtype), alpha=alpha)
