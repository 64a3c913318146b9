"""Owner verification: a second rank recomputes sampled Newton–Schulz results of distributed Muon.

Distributed Muon (``ddp`` mode, or ``fsdp2`` mode within the shard group) orthogonalizes each matrix once,
on its owner rank, and copies the result to every replica (or sends every rank its rows). A wrong result there (a defective ALU on the owner) reaches every
replica identically, so the replica fingerprints still agree: only recomputing the owner's work
elsewhere can catch it.

The verifier attaches to the live optimizer without any SDC code inside it: it wraps the optimizer's
``_orthogonalize(grad, momentum)`` (to see the matrix handed to Newton–Schulz and the result) and its
transport's ``start_to_all(bucket, updates)`` (to learn which blocks the result belongs to, just before
it is shared — which is also where ``ns_corrupt`` faults flip a bit of an owner's result). On other
steps the wrappers only pass calls through. On verification steps (every ``sdc.owner_verify_every``):

1. each owner keeps up to ``sdc.owner_verify_samples`` of its Newton–Schulz calls, picked by reservoir
   sampling seeded with the step and rank: the input and the fingerprint of the result it shared;
2. at the quiet point after the step, every rank all-gathers what the others kept (names, shapes,
   fingerprints), and in a ring each owner sends the kept inputs to its verifier, rank
   (owner + 1 + step mod (W − 1)) mod W, never itself;
3. the verifier reruns Newton–Schulz with the optimizer's settings on the same input and compares
   fingerprints; verdicts are all-gathered;
4. on a mismatch the owner recomputes too: if its second result matches the verifier's, the owner's
   first result was wrong (a transient fault on the owner, which is named); if it matches its own first
   result, owner and verifier persistently disagree (both are suspects).

Recomputation is bit-exact: the same function on the same input with the same shapes on the same kind
of device (batched Newton–Schulz is deterministic there), and fingerprints compare bits.

Shape legend: m blocks in one owner segment, R×C one matrix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from lagoon.sdc.config import SDCConfig
from lagoon.sdc.fingerprint import Fingerprinter
from lagoon.sdc.inject import FaultInjector
from lagoon.sdc.replicas import ReplicaGroup


@dataclass
class _Kept:
    names: list[str]
    input_mRC: torch.Tensor
    digest: list[list[int]]
    """One fingerprint per matrix of the result, so a mismatch names the very matrix."""


@dataclass
class OwnerVerifier:
    config: SDCConfig
    replicas: ReplicaGroup
    injector: FaultInjector | None
    optimizer: Any
    fingerprinter: Fingerprinter
    step: int = 1
    """The optimizer step in progress (the hooks advance it at every quiet point)."""
    kept: list[_Kept] = field(default_factory=list)
    seen: int = 0
    verified: int = 0
    _pending: tuple[torch.Tensor, torch.Tensor] | None = None
    _rng: random.Random | None = None

    @classmethod
    def attach(cls, optimizer: Any, config: SDCConfig, replicas: ReplicaGroup, injector: FaultInjector | None,
               step: int) -> "OwnerVerifier | None":
        """Wrap a distributed Muon (``ddp`` or ``fsdp2`` mode, `replicas` its data-parallel group); None for any
        other optimizer (nothing to verify)."""
        if getattr(optimizer, "mode", None) not in ("ddp", "fsdp2") or not hasattr(optimizer, "_orthogonalize") or replicas.size < 2:
            return None
        verifier = cls(config=config, replicas=replicas, injector=injector, optimizer=optimizer,
                       fingerprinter=Fingerprinter(config.lanes, config.kernel), step=step + 1)
        orthogonalize, start_to_all = optimizer._orthogonalize, optimizer.transport.start_to_all

        def observed_orthogonalize(grad_mRC: torch.Tensor, momentum_mRC: torch.Tensor) -> torch.Tensor:
            direction = verifier._direction(grad_mRC, momentum_mRC) if verifier._watching() else None
            out = orthogonalize(grad_mRC, momentum_mRC)
            verifier._pending = (direction, out) if direction is not None else None
            return out

        def observed_start_to_all(bucket: Any, updates_mRC: torch.Tensor, **options):
            if options:   # momenta travelling for a sharded state dict, not Newton–Schulz results
                return start_to_all(bucket, updates_mRC, **options)
            verifier._observe(bucket, updates_mRC)
            return start_to_all(bucket, updates_mRC)

        optimizer._orthogonalize = observed_orthogonalize
        optimizer.transport.start_to_all = observed_start_to_all
        return verifier

    # ----------------------------------------------------------------------------------------------
    def _verification_step(self, step: int) -> bool:
        every = self.config.owner_verify_every
        return self.config.enabled and every > 0 and step % every == 0

    def _watching(self) -> bool:
        return self._verification_step(self.step)

    def _direction(self, grad_mRC: torch.Tensor, momentum_mRC: torch.Tensor) -> torch.Tensor:
        """The matrix `_orthogonalize` will hand to Newton–Schulz, computed by the same operations on a copy."""
        from lagoon.optim.functional import muon_direction

        config = self.optimizer.config
        return muon_direction(grad_mRC, momentum_mRC.clone(), config.momentum, config.nesterov)

    def _digests(self, output_mRC: torch.Tensor) -> list[list[int]]:
        return self.fingerprinter.digest(list(output_mRC.unbind(0))).tolist()

    def recompute(self, input_mRC: torch.Tensor) -> torch.Tensor:
        from lagoon.optim.newton_schulz import newton_schulz

        config = self.optimizer.config
        return newton_schulz(input_mRC, config.ns_steps, config.ns_coefficients, config.ns_dtype)

    @torch.no_grad()
    def _observe(self, bucket: Any, updates_mRC: torch.Tensor) -> None:
        """On the owner, just before its result for `bucket` is shared."""
        segment, matrices = bucket.segments[self.replicas.position], self.optimizer.matrices
        if self.injector is not None and self.injector.due(self.step, ("ns_corrupt",)):
            for index, block in enumerate(segment):
                self.injector.corrupt_newton_schulz(self.step, matrices[block.param].name, updates_mRC[index])
        pending, self._pending = self._pending, None
        if pending is None or pending[1] is not updates_mRC or not segment:
            return
        names = [f"{matrices[b.param].name}[{b.index}]" if matrices[b.param].count > 1 else matrices[b.param].name
                 for b in segment]
        if self._rng is None:
            self.kept, self.seen = [], 0
            self._rng = random.Random(self.step * 1_000_003 + self.replicas.rank)
        self.seen += 1
        entry = _Kept(names, pending[0], self._digests(updates_mRC))
        limit = self.config.owner_verify_samples
        if len(self.kept) < limit:
            self.kept.append(entry)
        else:  # reservoir sampling: every call of the step is kept with the same probability
            slot = self._rng.randrange(self.seen)
            if slot < limit:
                self.kept[slot] = entry

    # ----------------------------------------------------------------------------------------------
    def after_step(self, step: int) -> list[tuple[str, dict[str, Any]]]:
        """At the quiet point after `step`: exchange, recompute, compare (every rank calls it)."""
        self.step = step + 1
        kept, self.kept, self._rng = self.kept, [], None
        if not self._verification_step(step):
            return []
        replicas, size, me = self.replicas, self.replicas.size, self.replicas.position
        headers: list[Any] = [None] * size
        mine = [(k.names, tuple(k.input_mRC.shape), str(k.input_mRC.dtype).removeprefix("torch."), k.digest)
                for k in kept]
        dist.all_gather_object(headers, mine, group=replicas.group)
        verifier_of = [(owner + 1 + step % (size - 1)) % size for owner in range(size)]
        source = verifier_of.index(me)
        # Ring exchange of the kept inputs: owner → its verifier.
        requests, inbox = [], []
        for names, shape, dtype, _ in headers[source]:
            buffer = torch.empty(shape, dtype=getattr(torch, dtype))
            inbox.append(buffer)
            requests.append(dist.P2POp(dist.irecv, buffer, replicas.ranks[source], replicas.group))
        for entry in kept:
            requests.append(dist.P2POp(dist.isend, entry.input_mRC.cpu().contiguous(), replicas.ranks[verifier_of[me]],
                                       replicas.group))
        if requests:
            for work in dist.batch_isend_irecv(requests):
                work.wait()
        results = []
        for (names, _, _, digest), input_mRC in zip(headers[source], inbox):
            recomputed = self._digests(self.recompute(input_mRC))
            results.append((source, names, digest, recomputed))
            self.verified += 1
        verdicts: list[Any] = [None] * size
        dist.all_gather_object(verdicts, results, group=replicas.group)
        mismatches = [(owner, names, digest, theirs) for per_rank in verdicts
                      for owner, names, digest, theirs in per_rank if theirs != digest]
        if not mismatches:
            return []
        return self._localize(step, mismatches, kept, verifier_of)

    def _localize(self, step: int, mismatches: list, kept: list[_Kept], verifier_of: list[int]) -> list[tuple[str, dict]]:
        """On a mismatch the owner recomputes once: tells a transient owner fault from a persistent disagreement."""
        replicas, me = self.replicas, self.replicas.position
        second = [(names, self._digests(self.recompute(entry.input_mRC)))
                  for owner, names, _, _ in mismatches if owner == me
                  for entry in kept if entry.names == names]
        everyone: list[Any] = [None] * replicas.size
        dist.all_gather_object(everyone, second, group=replicas.group)
        events = []
        for owner, names, digest, theirs in mismatches:
            again = next((a for n, a in everyone[owner] if n == names), None)
            verifier = verifier_of[owner]
            if again == theirs:
                positions, verdict = [owner], "a transient fault on the owner (its recomputation matches the verifier's)"
            elif again == digest:
                positions, verdict = [owner, verifier], "owner and verifier persistently disagree"
            else:
                positions, verdict = [owner], "the owner's results are unstable"
            wrong = [name for name, ours, other in zip(names, digest, theirs) if ours != other]
            events.append(("sdc_owner_mismatch", {
                "ranks": [replicas.ranks[p] for p in positions], "hosts": [replicas.hosts[p] for p in positions],
                "parameters": wrong, "owner": replicas.ranks[owner], "verifier": replicas.ranks[verifier],
                "action": self.config.policy,
                "detail": f"the Newton–Schulz result for {', '.join(wrong[:3])} computed by its owner "
                          f"{replicas.name(owner)} in step {step} differs from {replicas.name(verifier)}'s "
                          f"recomputation: {verdict}"}))
        return events
