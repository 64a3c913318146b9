"""Optimizer state as a sharded state dict for torch.distributed.checkpoint: the same keys in every layout.

    state = sharded_state_dict(optimizer)       # {"step": [], "muon": {name: {"momentum": …}}, "adamw": {…}}
    dcp.save({"optim": state, …})
    ...
    state = sharded_state_dict(optimizer)       # the targets: this rank's shards, the right global shapes
    dcp.load({"optim": state, …})
    load_sharded_state_dict(optimizer, state)

Each tensor has its parameter's global shape. Under FSDP2/HSDP it is a DTensor with its parameter's
placements, holding this rank's rows: distributed Muon keeps a matrix's momentum on its owner, so saving
sends each owner's momenta to the row holders with the all-to-all the step uses for updates (in the
momentum's dtype), and loading sends the rows back to the owners like gradients. In replicated layouts the
tensors are full and identical on every rank (DCP writes one copy). Because keys and global shapes do not
depend on the layout, DCP reshards on load: a checkpoint written by 4 FSDP ranks resumes on 2 DDP ranks.
"""

from __future__ import annotations

from typing import Any

import torch

from lagoon.optim.optimizer import LagoonOptimizer
from lagoon.optim.sharded_adamw import LocalShardAdamW, local_tensor


def _like(param: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """`local` (this rank's rows) as a DTensor placed like `param`; `local` itself for a plain parameter."""
    if not hasattr(param, "device_mesh"):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, param.device_mesh, param.placements, run_check=False, shape=param.shape,
                              stride=param.stride())


def _is_fsdp_muon(optimizer: LagoonOptimizer) -> bool:
    return getattr(optimizer, "mode", None) == "fsdp2"


@torch.no_grad()
def sharded_state_dict(optimizer: LagoonOptimizer) -> dict[str, Any]:
    """The optimizer's state in checkpoint form (a collective for distributed Muon: every rank calls it)."""
    step = torch.tensor(optimizer.step_count, dtype=torch.int64)
    if not _is_fsdp_muon(optimizer):
        full = optimizer.state_dict()   # LocalOptimizer: aliases the live state; ddp mode: gathered copies
        return {"step": step, "muon": full["muon"], "adamw": full["adamw"]}
    rows = _momentum_rows(optimizer)
    muon = {m.name: {"momentum": _like(m.param, rows[p])} for p, m in enumerate(optimizer.matrices)}
    adamw: LocalShardAdamW = optimizer.adamw
    moments = {name: {"exp_avg": _like(p, adamw.exp_avg[name]), "exp_avg_sq": _like(p, adamw.exp_avg_sq[name])}
               for name, p in adamw.entries}
    return {"step": step, "muon": muon, "adamw": moments}


def _momentum_rows(optimizer) -> dict[int, torch.Tensor]:
    """Every Muon parameter's momentum rows on this rank (local shape), sent home from the owners."""
    rows = {p: momentum for p, momentum in optimizer.local_momentum.items()}
    for p, matrix in enumerate(optimizer.matrices):
        if p not in rows:
            rows[p] = torch.zeros_like(local_tensor(matrix.param))
    dtype = optimizer.momentum[0].dtype if optimizer.momentum else torch.float32
    for bucket, segment in zip(optimizer.buckets, optimizer.momentum):
        received, work = optimizer.transport.start_to_all(bucket, segment, dtype=dtype)
        work.wait()
        for owner, blocks in enumerate(bucket.segments):
            for i, block in enumerate(blocks):
                local = rows[block.param]
                local.copy_(received[owner, i, : local.shape[0]].view_as(local))
    return rows


@torch.no_grad()
def load_sharded_state_dict(optimizer: LagoonOptimizer, state: dict[str, Any]) -> None:
    """Take the state `sharded_state_dict` returned after DCP filled it (a collective for distributed Muon)."""
    step = int(state["step"])
    if not _is_fsdp_muon(optimizer):
        full = {"format": "lagoon.optim/1", "optimizer": optimizer.config.name, "step": step,
                "muon": {name: {k: local_tensor(v) for k, v in entry.items()} for name, entry in state["muon"].items()},
                "adamw": {name: {k: local_tensor(v) for k, v in entry.items()} for name, entry in state["adamw"].items()}}
        optimizer.load_state_dict(full)
        return
    optimizer.step_count = step
    rows = {p: local_tensor(state["muon"][m.name]["momentum"]) for p, m in enumerate(optimizer.matrices)}
    for p in optimizer.local_params:
        optimizer.local_momentum[p].copy_(rows[p])
    for k, bucket in enumerate(optimizer.buckets):
        received, work = optimizer.transport.start_to_owners(bucket, rows)
        work.wait()
        optimizer.momentum[k].copy_(optimizer.transport.assemble(bucket, received))
    adamw: LocalShardAdamW = optimizer.adamw
    for name, _ in adamw.entries:
        adamw.exp_avg[name].copy_(local_tensor(state["adamw"][name]["exp_avg"]))
        adamw.exp_avg_sq[name].copy_(local_tensor(state["adamw"][name]["exp_avg_sq"]))
