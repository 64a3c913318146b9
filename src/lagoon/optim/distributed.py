"""Distributed Muon: every matrix orthogonalized once, by its owner rank, with communication overlapped.

Each Muon matrix (a 2-D weight, or one expert's matrix in a 3-D stack) has one owner (`ownership`);
its momentum lives only there, so the job holds one state per parameter in total. Per step:

``ddp`` (replicated parameters, model not wrapped in DDP):

    1. reduce-scatter each bucket's gradients to the owners (not an all-reduce: half the bytes), smallest
       bucket first, all issued at once; and the ZeRO-1 AdamW gradients;
    2. as each bucket lands: momentum and Newton–Schulz for the owned segment, then the all-gather of the
       orthogonalized updates (in the Newton–Schulz dtype) is issued — so bucket k's communication runs
       while bucket k+1 is orthogonalized;
    3. the global gradient norm (one scalar all-reduce) decides clipping. Steps 1–2 assumed "no clipping";
       when the norm says clip (or is not finite), the momenta are restored from their backups and the
       owned segments recomputed with the clipped gradient (or left alone) — exact either way, and cheap
       in the common case where clipping is inactive;
    4. AdamW on this rank's flat slice, all-gathered — as soon as the norm is back and says "no clipping",
       so behind the remaining Newton–Schulz; every replica applies decay and the gathered updates.

``fsdp2`` (``fully_shard`` parameters, dim-0 DTensor shards, gradients already reduced by FSDP2):

    1. the gradient norm from local shards (one scalar all-reduce, issued first; clipping is then known);
    2. all-to-all each bucket's row shards to the owners (uneven shards padded), smallest first;
    3. expert stacks need no communication: FSDP2's dim-0 shard holds whole experts, so the holder owns
       them and orthogonalizes them while the first all-to-alls are in flight (also when FSDP2 shards an
       expert-parallel stack again: which rows a rank holds is read from the DTensor layout);
    4. each owner assembles, orthogonalizes and all-to-alls the rows back; AdamW runs on local shards.

Expert parallelism (``ddp`` mode; `lagoon.parallel.expert`): expert stacks are ``Shard(0)`` DTensors whose
experts are whole on their holder, so they never travel to other owners; their gradients are reduced only
over the ranks holding the same experts, with the same bucket pipeline on that group, which is empty of
communication when every expert has one holder (`lagoon.optim.expert_owners`).

Every rank issues the same collectives in the same order whatever its data (an expert that saw no tokens
contributes zeros), and `lagoon.optim.handshake` checks first that all ranks built the same plan.

Shape legend: W ranks, M slots per owner segment, m this rank's owned blocks in a bucket (m ≤ M),
R×C one matrix, s rows of one rank's dim-0 shard (⌈R/W⌉).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist

from lagoon.errors import LagoonError
from lagoon.optim.config import OptimConfig
from lagoon.optim.data_parallel import DataParallel
from lagoon.optim.expert_owners import (
    ExpertReplicas, expert_owners, find_replicas, full_from_local, is_expert_parallel, local_rows,
)
from lagoon.optim.functional import clip_coefficient, muon_direction, muon_scale
from lagoon.optim.grouping import ParameterGroups
from lagoon.optim.newton_schulz import DTYPES, newton_schulz
from lagoon.optim.optimizer import STATE_FORMAT, LagoonOptimizer
from lagoon.optim.ownership import Block, Bucket, assign_owners, blocks_of, imbalance, load_per_rank, make_buckets
from lagoon.optim.sharded_adamw import FlatShardedAdamW, LocalShardAdamW, local_tensor
from lagoon.optim.transport import DDPTransport, FSDPTransport


def _squared(tensor: torch.Tensor) -> torch.Tensor:
    """‖t‖² accumulated in float64 (the norm itself in the tensor's dtype, without a float64 copy)."""
    return torch.linalg.vector_norm(tensor).double() ** 2


class DistributedMuon(LagoonOptimizer):
    """Muon + AdamW sharded over data-parallel ranks (``optim.distributed = "ddp"`` or ``"fsdp2"``)."""

    reduces_gradients = True

    def __init__(self, groups: ParameterGroups, config: OptimConfig, data_parallel: DataParallel):
        super().__init__(groups, config)
        self.dp = data_parallel
        self.mode = config.distributed
        W = data_parallel.world_size
        self.matrices = groups.muon
        blocks = blocks_of(self.matrices)
        sharded = [hasattr(m.param, "to_local") for m in self.matrices] + [hasattr(p, "to_local") for _, p in groups.adamw]
        if self.mode == "fsdp2" and not all(sharded):
            raise LagoonError("optim.distributed = \"fsdp2\" needs a model sharded with lagoon.optim.fsdp.shard_model")
        self.expert_params = [p for p, m in enumerate(self.matrices) if self.mode == "ddp" and is_expert_parallel(m.param)]
        if self.mode == "ddp":
            if any(is_expert_parallel(p) for _, p in groups.adamw):
                raise LagoonError("optim.distributed = \"ddp\" with expert parallelism needs optim.name = \"muon\" "
                                  "(AdamW on expert-parallel stacks is not supported in this mode)")
            others = [p for _, p in groups.adamw + groups.adamw_no_decay] + [m.param for m in self.matrices]
            if sum(hasattr(p, "to_local") for p in others) > len(self.expert_params):
                raise LagoonError("optim.distributed = \"ddp\" needs plain (replicated) parameters, not DTensors "
                                  "(expert-parallel expert stacks excepted)")

        # Expert stacks under FSDP2: the rank holding an expert's rows owns its matrices (no communication).
        # Where the rows are comes from the DTensor layout (FSDP2 alone: rank order; over expert parallelism:
        # each EP rank's experts split again), gathered once so every rank knows every holder.
        self.local_params: list[int] = []
        self.local_rows: dict[int, tuple[int, int]] = {}
        fixed: dict[Block, int] = {}
        if self.mode == "fsdp2":
            self.local_params = [p for p, matrix in enumerate(self.matrices) if matrix.param.dim() == 3]
            self.local_rows = {p: local_rows(self.matrices[p].param) for p in self.local_params}
            everyone: list[dict[int, tuple[int, int]]] = [{} for _ in range(W)]
            dist.all_gather_object(everyone, self.local_rows, group=data_parallel.group)
            for p in self.local_params:
                per_expert = self.matrices[p].count // self.matrices[p].param.shape[0]
                for block in (b for b in blocks if b.param == p):
                    expert = block.index // per_expert
                    fixed[block] = next(r for r in range(W) if everyone[r][p][0] <= expert < everyone[r][p][1])
        # Expert-parallel stacks (ddp): owned among the ranks holding the same experts, moved only among them.
        self.replicas: ExpertReplicas | None = None
        expert_buckets: list[Bucket] = []
        if self.expert_params:
            self.replicas = find_replicas(self.matrices[self.expert_params[0]].param, data_parallel)
            assert all(self.matrices[p].param.device_mesh == self.matrices[self.expert_params[0]].param.device_mesh
                       for p in self.expert_params), "every expert stack must share one expert-parallel mesh"
            fixed, local_owners = expert_owners(self.matrices, self.expert_params, self.replicas)
            expert_buckets = make_buckets(list(local_owners), local_owners, self.replicas.group.world_size,
                                          config.bucket_mb * 2**20)
        self.owners = assign_owners(blocks, W, fixed)
        moving = [b for b in blocks if b not in fixed]
        self.ns_load = load_per_rank(self.owners, W)
        transport_cls = DDPTransport if self.mode == "ddp" else FSDPTransport
        update_dtype = DTYPES[config.ns_dtype]
        transport = transport_cls(self.matrices, data_parallel, update_dtype)
        routes = [(b, transport) for b in make_buckets(moving, self.owners, W, config.bucket_mb * 2**20)]
        if expert_buckets:
            expert_transport = DDPTransport(self.matrices, self.replicas.group, update_dtype)
            routes += [(b, expert_transport) for b in expert_buckets]
        routes.sort(key=lambda route: route[0].padded_elements)  # smallest first; stable, so every rank agrees
        self.buckets = [bucket for bucket, _ in routes]
        self.transports = [t for _, t in routes]
        """The transport of each bucket: over the data-parallel group, or over an expert position's replicas."""

        # Momentum: one [m, R, C] tensor per bucket (this rank's segment), one local stack per expert param.
        dtype = self.matrices[0].param.dtype if self.matrices else torch.float32
        first = [m.param for m in self.matrices] + [p for _, p in groups.adamw + groups.adamw_no_decay]
        self.device = local_tensor(first[0]).device if first else torch.device("cpu")
        self.momentum = [torch.zeros((len(b.segments[t.dp.rank]), b.rows, b.cols), dtype=dtype, device=self.device)
                         for b, t in zip(self.buckets, self.transports)]
        self.local_momentum = {p: torch.zeros_like(local_tensor(self.matrices[p].param)) for p in self.local_params}
        self.transport = transport
        adamw_cls = FlatShardedAdamW if self.mode == "ddp" else LocalShardAdamW
        self.adamw = adamw_cls(groups.adamw, groups.adamw_no_decay, data_parallel)
        self.timings: dict[str, float] = {}
        """Wall seconds of the last step: ``newton_schulz``, ``waiting`` (blocked in collectives), ``total``. On CUDA,
        kernels run asynchronously, so these are host-side times (profile with torch.profiler there)."""

    # ---------------------------------------------------------------------------------------------
    def _orthogonalize(self, grad_mRC: torch.Tensor, momentum_mRC: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        config = self.config
        direction = muon_direction(grad_mRC, momentum_mRC, config.momentum, config.nesterov)
        out = newton_schulz(direction, config.ns_steps, config.ns_coefficients, config.ns_dtype, config.ns_matmul)
        self.timings["newton_schulz"] += time.perf_counter() - start
        return out

    def _wait(self, work: dist.Work | None) -> None:
        if work is not None:
            start = time.perf_counter()
            work.wait()
            self.timings["waiting"] += time.perf_counter() - start

    def _start_norm(self, squared: torch.Tensor) -> tuple[torch.Tensor, dist.Work]:
        total = squared.to(torch.float64).reshape(1)
        return total, dist.all_reduce(total, group=self.dp.group, async_op=True)

    def _finish_norm(self, pending: tuple[torch.Tensor, dist.Work]) -> float:
        total, work = pending
        self._wait(work)
        return math.sqrt(float(total)) if math.isfinite(float(total)) else float(total)

    @torch.no_grad()
    def step(self, max_grad_norm: float | None = None) -> dict[str, float]:
        self.timings = {"newton_schulz": 0.0, "waiting": 0.0}
        start = time.perf_counter()
        metrics = self._step_ddp(max_grad_norm) if self.mode == "ddp" else self._step_fsdp(max_grad_norm)
        self.timings["total"] = time.perf_counter() - start
        return metrics

    def _apply_decay(self) -> None:
        params = [local_tensor(m.param).detach() for m in self.matrices]
        if params and self.config.weight_decay:
            torch._foreach_mul_(params, 1 - self.muon_lr * self.config.weight_decay)

    def _scale(self, bucket_or_param) -> float:
        rows, cols = (bucket_or_param.rows, bucket_or_param.cols)
        return -self.muon_lr * muon_scale(rows, cols, self.config.muon_scaling)

    def _adamw_step(self, grads, coefficient: float):
        config = self.config
        if coefficient < 1.0:
            if isinstance(grads, dict):
                torch._foreach_mul_(list(grads.values()), coefficient)
            else:
                grads.mul_(coefficient)
        return self.adamw.update(grads, step=self.step_count, lr=self.adamw_lr, betas=tuple(config.adamw_betas),
                                 eps=config.adamw_eps, weight_decay=config.weight_decay)

    # ---------------------------------------------------------------------------------------------
    def _step_ddp(self, max_grad_norm: float | None) -> dict[str, float]:
        W = self.dp.world_size
        # 1. Every reduce-scatter at once: the Muon buckets, smallest first (Newton–Schulz starts when the first
        #    lands), then AdamW's slice.
        received = [t.start_to_owners(bucket) for bucket, t in zip(self.buckets, self.transports)]
        adamw_grad_S, adamw_work = self.adamw.start_reduce()
        squared = torch.zeros((), dtype=torch.float64, device=self.device)
        landed = [False] * len(self.buckets)

        def land(k: int) -> torch.Tensor:
            """Bucket k's averaged gradients of the owned blocks, counted into the norm once (an expert
            bucket's sum covers its replicas' tokens and, through the all-to-alls, its expert-parallel group's:
            every data-parallel rank's, hence the division by W)."""
            nonlocal squared
            grads_mRC = received[k][0][: len(self.buckets[k].segments[self.transports[k].dp.rank])]
            if not landed[k]:
                self._wait(received[k][1])
                grads_mRC.div_(W)
                squared += _squared(grads_mRC)
                landed[k] = True
            return grads_mRC

        def start_norm() -> tuple[torch.Tensor, dist.Work]:
            """Count every bucket and the AdamW slice into ‖g‖² (waiting where needed) and all-reduce it."""
            for k in range(len(self.buckets)):
                land(k)
            self._wait(adamw_work)
            adamw_grad_S.div_(W)
            return self._start_norm(squared + _squared(adamw_grad_S))

        # 2. As each bucket lands: momentum + Newton–Schulz assuming no clipping, then its all-gather. As soon
        #    as every gradient has landed, the norm's all-reduce goes out; once it is back and says "no
        #    clipping", AdamW updates its slice and all-gathers it behind the remaining Newton–Schulz.
        norm: tuple[torch.Tensor, dist.Work] | None = None
        adamw_gather = None
        backups, gathers = [], []
        for k, bucket in enumerate(self.buckets):
            grads_mRC = land(k)
            backups.append(self.momentum[k].clone())
            gathers.append(self.transports[k].start_to_all(bucket, self._orthogonalize(grads_mRC, self.momentum[k])))
            if norm is None and all(work is None or work.is_completed() for _, work in [*received, (None, adamw_work)]):
                norm = start_norm()
            if norm is not None and adamw_gather is None and norm[1].is_completed():
                grad_norm = self._finish_norm(norm)
                if math.isfinite(grad_norm) and clip_coefficient(grad_norm, max_grad_norm) == 1.0:
                    self.step_count += 1
                    adamw_gather = self.adamw.start_gather(self._adamw_step(adamw_grad_S, 1.0))
        if norm is None:
            norm = start_norm()
        grad_norm = self._finish_norm(norm)
        coefficient = clip_coefficient(grad_norm, max_grad_norm)
        metrics = self._metrics(grad_norm, coefficient)
        # 3. Clipping (or a non-finite norm) means the speculative updates are discarded and redone (or not).
        if not math.isfinite(grad_norm) or coefficient < 1.0:
            for (_, work), momentum, backup in zip(gathers, self.momentum, backups):
                self._wait(work)
                momentum.copy_(backup)
            if not math.isfinite(grad_norm):
                return metrics
            gathers = []
            for k, bucket in enumerate(self.buckets):
                grads_mRC = land(k).mul_(coefficient)
                gathers.append(self.transports[k].start_to_all(bucket, self._orthogonalize(grads_mRC, self.momentum[k])))
        del backups
        if adamw_gather is None:
            self.step_count += 1
            adamw_gather = self.adamw.start_gather(self._adamw_step(adamw_grad_S, coefficient))
        # 4. Every replica applies the decay and the gathered updates.
        self._apply_decay()
        for bucket, transport, (updates, work) in zip(self.buckets, self.transports, gathers):
            self._wait(work)
            transport.apply(bucket, updates, self._scale(bucket))
        adamw_flat, adamw_work_gather = adamw_gather
        self._wait(adamw_work_gather)
        self.adamw.finish(adamw_flat)
        return metrics

    def _step_fsdp(self, max_grad_norm: float | None) -> dict[str, float]:
        # 1. The norm from local shards (each element lives on exactly one rank), issued first.
        local_grads = {p: self.transport.local_grad(p) for p in range(len(self.matrices))}
        adamw_grads = self.adamw.local_grads()
        squared = torch.zeros((), dtype=torch.float64, device=self.device)
        for grad in [*local_grads.values(), *adamw_grads.values()]:
            squared += _squared(grad)
        pending_norm = self._start_norm(squared)
        # 2. Row shards to their owners, smallest bucket first.
        received = [self.transport.start_to_owners(bucket, local_grads) for bucket in self.buckets]
        grad_norm = self._finish_norm(pending_norm)
        coefficient = clip_coefficient(grad_norm, max_grad_norm)
        metrics = self._metrics(grad_norm, coefficient)
        if not math.isfinite(grad_norm):
            for _, work in received:
                self._wait(work)
            return metrics
        self.step_count += 1
        # 3. Whole experts held here: orthogonalized while the all-to-alls are in flight.
        local_updates = self._orthogonalize_local(local_grads, coefficient)
        # 4. Each bucket: assemble full matrices, orthogonalize, send the rows back.
        returns = []
        for k, bucket in enumerate(self.buckets):
            self._wait(received[k][1])
            grads_mRC = self.transport.assemble(bucket, received[k][0])
            if coefficient < 1.0:
                grads_mRC.mul_(coefficient)
            returns.append(self.transport.start_to_all(bucket, self._orthogonalize(grads_mRC, self.momentum[k])))
        self._adamw_step(adamw_grads, coefficient)
        self._apply_decay()
        for p, update in local_updates.items():
            matrix = self.matrices[p]
            local_tensor(matrix.param).detach().add_(update.view_as(local_tensor(matrix.param)), alpha=self._scale(matrix))
        for bucket, (updates, work) in zip(self.buckets, returns):
            self._wait(work)
            self.transport.apply(bucket, updates, self._scale(bucket))
        return metrics

    def _orthogonalize_local(self, local_grads: dict[int, torch.Tensor], coefficient: float) -> dict[int, torch.Tensor]:
        """Newton–Schulz for the expert stacks this rank holds, one batched call per shape."""
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for p in self.local_params:
            by_shape[self.matrices[p].shape].append(p)
        updates = {}
        for (rows, cols), params in by_shape.items():
            grads = [local_grads[p].reshape(-1, rows, cols) for p in params]
            momenta = [self.local_momentum[p].view(-1, rows, cols) for p in params]
            grads_NRC, momentum_NRC = torch.cat(grads), torch.cat(momenta)
            if coefficient < 1.0:
                grads_NRC.mul_(coefficient)
            ortho_NRC = self._orthogonalize(grads_NRC, momentum_NRC)
            for p, momentum, piece, update in zip(params, momenta, momentum_NRC.split([g.shape[0] for g in grads]),
                                                  ortho_NRC.split([g.shape[0] for g in grads])):
                momentum.copy_(piece)
                updates[p] = update
        return updates

    # ---------------------------------------------------------------------------------------------
    @property
    def load_balance(self) -> float:
        """max / mean Newton–Schulz cost over ranks (the owner assignment's balance)."""
        return imbalance(self.ns_load)

    def owned_state_elements(self) -> int:
        """Elements of optimizer state this rank holds (Muon momenta + AdamW moments)."""
        muon = sum(m.numel() for m in self.momentum) + sum(m.numel() for m in self.local_momentum.values())
        if isinstance(self.adamw, FlatShardedAdamW):
            return muon + 2 * self.adamw.shard
        return muon + sum(t.numel() for t in self.adamw.exp_avg.values()) * 2

    def state_dict(self) -> dict[str, Any]:
        """The full, world-size independent state on every rank (a collective: call it on every rank)."""
        # Full tensors on the CPU, ready to be saved.
        momentum = {m.name: torch.zeros(m.param.shape, dtype=self.momentum[0].dtype if self.momentum else m.param.dtype)
                    for m in self.matrices}
        # An expert-parallel stack's buckets hold this position's experts: assembled locally, then gathered whole.
        local = {p: torch.zeros(local_tensor(self.matrices[p].param).shape, dtype=momentum[self.matrices[p].name].dtype)
                 for p in self.expert_params}
        for bucket, transport, segment in zip(self.buckets, self.transports, self.momentum):
            gathered = transport.gather_segments(bucket, segment).cpu()
            for p, (indices, slots) in bucket.per_param().items():
                matrix = self.matrices[p]
                target = local[p] if p in local else momentum[matrix.name]
                target.view(-1, matrix.rows, matrix.cols).index_copy_(0, indices, gathered[slots])
        for p, tensor in local.items():
            momentum[self.matrices[p].name] = full_from_local(tensor.to(self.device), self.matrices[p].param).cpu()
        for p in self.local_params:
            matrix = self.matrices[p]
            momentum[matrix.name] = full_from_local(self.local_momentum[p], matrix.param).view(matrix.param.shape).cpu()
        return {"format": STATE_FORMAT, "optimizer": self.config.name, "step": self.step_count,
                "muon": {name: {"momentum": t} for name, t in momentum.items()}, "adamw": self.adamw.full_state()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take this rank's part of a full state (every rank passes the same full state)."""
        self._check_state(state)
        self.step_count = int(state["step"])
        for bucket, transport, segment in zip(self.buckets, self.transports, self.momentum):
            for i, block in enumerate(bucket.segments[transport.dp.rank]):
                matrix = self.matrices[block.param]
                full = state["muon"][matrix.name]["momentum"].reshape(matrix.count, matrix.rows, matrix.cols)
                offset = 0
                if block.param in self.expert_params:  # a local index: this position's first matrix comes first
                    offset = self.replicas.position * (matrix.count // self.replicas.size)
                segment[i].copy_(full[offset + block.index])
        for p in self.local_params:
            matrix = self.matrices[p]
            start, stop = self.local_rows[p]
            self.local_momentum[p].copy_(state["muon"][matrix.name]["momentum"][start:stop].view_as(self.local_momentum[p]))
        self.adamw.load_full_state(state["adamw"])
