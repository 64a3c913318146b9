"""Who holds copies of the same weights, and talking to them with a deadline.

Under DDP (and distributed Muon over replicated parameters) every data-parallel rank is a replica of
every parameter. Under FSDP2/HSDP a rank holds shards; ranks holding the *same* shard — the ranks along
the mesh's replicate dimension — are replicas of each other, and only they are compared
(`from_mesh`). A plain FSDP mesh with no replicate dimension has no replicas to compare.

SDC collectives run on a dedicated gloo group created with ``sdc.timeout_s``, so a hung peer turns into
an error after the deadline instead of a deadlock, and so the digests (a few KB) travel over the CPU
whatever the training backend. `all_gather` turns that error into `SDCHung` / `SDCPeerLost` naming the
rank and host that did not arrive, using the progress marks each rank leaves in the rendezvous store
(`lagoon.sdc.watchdog`).
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from lagoon.sdc.errors import SDCHung, SDCPeerLost


@dataclass
class ReplicaGroup:
    """This rank's replicas: their global ranks (in group order), hosts, and the SDC gloo group."""

    ranks: list[int]
    position: int
    """This rank's index in `ranks`."""
    hosts: list[str]
    group: Any = None
    """The gloo process group over `ranks` (None when there is a single replica)."""
    timeout_s: float = 600.0
    describe_peers: Any = field(default=None, repr=False)
    """Callable(list of positions) → text naming what the store knows about them (set by the watchdog)."""

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def rank(self) -> int:
        return self.ranks[self.position]

    def name(self, position: int) -> str:
        """``rank 3 (host node-7)``."""
        return f"rank {self.ranks[position]} (host {self.hosts[position]})"

    def names(self, positions: list[int]) -> str:
        return ", ".join(self.name(p) for p in positions)

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def single(cls) -> "ReplicaGroup":
        return cls(ranks=[0], position=0, hosts=[socket.gethostname()])

    @classmethod
    def from_group(cls, group: Any, timeout_s: float) -> "ReplicaGroup":
        """Every rank of `group` (the data-parallel group) is a replica (DDP). A collective: every rank calls it."""
        if group is None or not dist.is_initialized() or dist.get_world_size(group) == 1:
            return cls.single()
        ranks = dist.get_process_group_ranks(group)
        return cls._build([ranks], timeout_s)

    @classmethod
    def from_mesh(cls, mesh: Any, replicate_dim: str | int, timeout_s: float) -> "ReplicaGroup":
        """Replicas along `replicate_dim` of a DeviceMesh (HSDP); every rank of the mesh calls it."""
        names = list(mesh.mesh_dim_names or [])
        dim = names.index(replicate_dim) if isinstance(replicate_dim, str) else int(replicate_dim)
        layout = mesh.mesh.movedim(dim, -1).reshape(-1, mesh.mesh.shape[dim])
        return cls._build([row.tolist() for row in layout], timeout_s)

    @classmethod
    def _build(cls, replica_sets: list[list[int]], timeout_s: float) -> "ReplicaGroup":
        me = dist.get_rank()
        timeout = datetime.timedelta(seconds=timeout_s)
        mine = None
        for ranks in replica_sets:  # new_group is collective over the default group: all ranks, same order
            group = dist.new_group(ranks=ranks, timeout=timeout, backend="gloo")
            if me in ranks:
                mine = (ranks, group)
        assert mine is not None, f"rank {me} is in no replica set {replica_sets}"
        ranks, group = mine
        hosts: list[Any] = [None] * len(ranks)
        dist.all_gather_object(hosts, socket.gethostname(), group=group)
        return cls(ranks=list(ranks), position=ranks.index(me), hosts=[str(h) for h in hosts], group=group,
                   timeout_s=timeout_s)

    # ----------------------------------------------------------------------------------------------
    def all_gather(self, table: torch.Tensor, what: str, step: int) -> torch.Tensor:
        """Every replica's `table` stacked: [W, *table.shape] (on the CPU). Raises SDCHung / SDCPeerLost when a
        peer does not take part within the deadline or has gone away."""
        table = table.detach().cpu().contiguous()
        if self.size == 1:
            return table.unsqueeze(0)
        flat = table.reshape(-1)
        out = torch.empty(self.size * flat.numel(), dtype=table.dtype)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        try:
            gather(out, flat, group=self.group)   # gloo takes the concatenated form
        except (RuntimeError, dist.DistError) as error:
            raise self.collective_failed(error, what, step) from error
        return out.view(self.size, *table.shape)

    def start_all_gather(self, table: torch.Tensor, what: str, step: int) -> Callable[[], torch.Tensor]:
        """`all_gather` in the background (gloo runs it on its own thread); call the result to wait for it."""
        table = table.detach().cpu().contiguous()
        if self.size == 1:
            return lambda: table.unsqueeze(0)
        flat = table.reshape(-1)
        out = torch.empty(self.size * flat.numel(), dtype=table.dtype)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        try:
            work = gather(out, flat, group=self.group, async_op=True)
        except (RuntimeError, dist.DistError) as error:
            raise self.collective_failed(error, what, step) from error

        def finish() -> torch.Tensor:
            try:
                work.wait()
            except (RuntimeError, dist.DistError) as error:
                raise self.collective_failed(error, what, step) from error
            return out.view(self.size, *table.shape)

        return finish

    def all_reduce_max(self, values: torch.Tensor, what: str, step: int) -> torch.Tensor:
        values = values.detach().cpu().clone()
        if self.size == 1:
            return values
        try:
            dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.group)
        except (RuntimeError, dist.DistError) as error:
            raise self.collective_failed(error, what, step) from error
        return values

    def collective_failed(self, error: BaseException, what: str, step: int) -> BaseException:
        """`SDCHung` for a collective that ran past its deadline, `SDCPeerLost` for one whose peer went away,
        naming the peers and what the store knows of them; any other error is returned unchanged."""
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        lowered = text.lower()
        timed_out = "timed out" in lowered or "timeout" in lowered
        lost = any(marker in lowered for marker in _PEER_GONE)
        if not (timed_out or lost):
            return error
        peers = [p for p in range(self.size) if p != self.position]
        known = self.describe_peers(peers) if self.describe_peers else ""
        kind = SDCHung if timed_out else SDCPeerLost
        verb = f"did not complete within {self.timeout_s:g} s" if timed_out else "failed: a peer went away"
        message = (f"the SDC {what} after step {step} on {self.name(self.position)} {verb} ({text})"
                   + (f"; {known}" if known else ""))
        return kind(message, ranks=[self.ranks[p] for p in peers], hosts=[self.hosts[p] for p in peers], step=step)


# Fragments of gloo's messages when the other end of a connection is gone.
_PEER_GONE = ("connection closed", "connection reset", "closed by peer", "broken pipe", "connection refused",
              "socket closed", "end of file", "eof")
