"""Owner verification: a second rank recomputes sampled Newton–Schulz results of distributed Muon.

Distributed Muon orthogonalizes each matrix once, on its owner rank, and copies the result to every
replica. A wrong result there (a defective ALU on the owner) reaches every replica identically, so the
replica fingerprints still agree: only recomputing the owner's work elsewhere can catch it.

The optimizer reports each Newton–Schulz call on an owner through an observer
(``optimizer.add_newton_schulz_observer(fn)``; ``fn(step, names, input_NRC, output_NRC)``, called after
the call and before the result is shared — the observer may change ``output_NRC`` in place, which is
how ``ns_corrupt`` faults are injected). The recomputation is ``optimizer.newton_schulz_call(input)``
when the optimizer has it, else `lagoon.optim.newton_schulz` with the optimizer's ``ns_*`` settings. On verification steps (every
``sdc.owner_verify_every`` steps) each owner keeps up to ``sdc.owner_verify_samples`` of its calls,
picked by reservoir sampling seeded with the step and rank, with the input and the fingerprint of the
output it shared. At the quiet point after the step:

1. every rank all-gathers what it kept (names, shapes, output fingerprints);
2. in a ring, each owner sends the kept inputs to its verifier, rank (owner + 1 + step) mod W;
3. the verifier reruns the same ``recompute`` on the same input and fingerprints the result;
4. verdicts are all-gathered; on a mismatch the owner recomputes too: if its second result matches the
   verifier's, the owner's first result was wrong (a transient fault on the owner, which is named);
   if it matches its own first result, owner and verifier persistently disagree (both are suspects).

Recomputation is bit-exact because it is the same function on the same input with the same shapes on
the same kind of device, and the fingerprints compare bits.

Shape legend: N matrices in one Newton–Schulz call, R×C one matrix.
"""

from __future__ import annotations

import random
from collections.abc import Callable
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
    input_NRC: torch.Tensor
    digest: list[int]


@dataclass
class OwnerVerifier:
    config: SDCConfig
    replicas: ReplicaGroup
    injector: FaultInjector | None
    fingerprinter: Fingerprinter
    recompute: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    kept: list[_Kept] = field(default_factory=list)
    seen: int = 0
    verified: int = 0
    _rng: random.Random | None = None
    _step: int = -1

    @classmethod
    def attach(cls, optimizer: Any, config: SDCConfig, replicas: ReplicaGroup,
               injector: FaultInjector | None) -> "OwnerVerifier | None":
        """Register with a distributed optimizer that reports its owner computations; None for any other."""
        register = getattr(optimizer, "add_newton_schulz_observer", None)
        if register is None:
            return None
        recompute = getattr(optimizer, "newton_schulz_call", None)
        if recompute is None:
            from lagoon.optim.newton_schulz import newton_schulz

            ns = optimizer.config

            def recompute(input_NRC: torch.Tensor) -> torch.Tensor:
                return newton_schulz(input_NRC, ns.ns_steps, ns.ns_coefficients, ns.ns_dtype)
        device = next((p.device for p in optimizer.trainable()), torch.device("cpu"))
        verifier = cls(config=config, replicas=replicas, injector=injector,
                       fingerprinter=Fingerprinter(config.lanes, config.kernel), recompute=recompute, device=device)
        register(verifier.observe)
        return verifier

    def _verification_step(self, step: int) -> bool:
        every = self.config.owner_verify_every
        return every > 0 and step % every == 0 and self.replicas.size > 1

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, step: int, names: list[str], input_NRC: torch.Tensor, output_NRC: torch.Tensor) -> None:
        """Called on the owner after each Newton–Schulz call of optimizer step `step`, before sharing."""
        if self.injector is not None:
            for index, name in enumerate(names):
                self.injector.corrupt_newton_schulz(step, name, output_NRC[index] if output_NRC.dim() > 2 else output_NRC)
        if not self._verification_step(step):
            return
        if step != self._step:
            self._step, self.seen, self.kept = step, 0, []
            self._rng = random.Random(step * 1_000_003 + self.replicas.rank)
        self.seen += 1
        entry = _Kept(list(names), input_NRC.detach().clone(), self.fingerprinter.digest([output_NRC])[0].tolist())
        limit = self.config.owner_verify_samples
        if len(self.kept) < limit:
            self.kept.append(entry)
        else:  # reservoir sampling: every call of the step is kept with the same probability
            slot = self._rng.randrange(self.seen)
            if slot < limit:
                self.kept[slot] = entry

    # ----------------------------------------------------------------------------------------------
    def after_step(self, step: int) -> list[tuple[str, dict[str, Any]]]:
        """At the quiet point of a verification step: exchange, recompute, compare (every rank calls it)."""
        if not self._verification_step(step):
            return []
        kept = self.kept if self._step == step else []
        self.kept, self._step = [], -1
        replicas, size, me = self.replicas, self.replicas.size, self.replicas.position
        headers: list[Any] = [None] * size
        mine = [(k.names, tuple(k.input_NRC.shape), str(k.input_NRC.dtype).removeprefix("torch."), k.digest)
                for k in kept]
        dist.all_gather_object(headers, mine, group=replicas.group)
        verifier_of = [(owner + 1 + step % (size - 1)) % size for owner in range(size)]
        source = verifier_of.index(me) if me in verifier_of else None
        # Ring exchange of the kept inputs: owner → its verifier.
        requests, inbox = [], []
        if source is not None:
            for names, shape, dtype, _ in headers[source]:
                buffer = torch.empty(shape, dtype=getattr(torch, dtype))
                inbox.append(buffer)
                requests.append(dist.P2POp(dist.irecv, buffer, replicas.ranks[source], replicas.group))
        for entry in kept:
            requests.append(dist.P2POp(dist.isend, entry.input_NRC.cpu().contiguous(), replicas.ranks[verifier_of[me]],
                                       replicas.group))
        if requests:
            for work in dist.batch_isend_irecv(requests):
                work.wait()
        # Recompute what was received, with this rank's own copy of the same function, on its own device.
        results = []
        if source is not None:
            for (names, _, _, digest), input_NRC in zip(headers[source], inbox):
                output = self.recompute(input_NRC.to(self.device))
                results.append((source, names, digest, self.fingerprinter.digest([output])[0].tolist()))
                self.verified += 1
        verdicts: list[Any] = [None] * size
        dist.all_gather_object(verdicts, results, group=replicas.group)
        mismatches = [(owner, names, digest, theirs) for per_rank in verdicts for owner, names, digest, theirs in per_rank
                      if theirs is not None and theirs != digest]
        return self._localize(step, mismatches, kept, verifier_of)

    def _localize(self, step: int, mismatches: list, kept: list[_Kept], verifier_of: list[int]) -> list[tuple[str, dict]]:
        """On a mismatch the owner recomputes once: tells a transient owner fault from a persistent disagreement."""
        replicas, me = self.replicas, self.replicas.position
        second: list[Any] = []
        for owner, names, digest, theirs in mismatches:
            if owner == me:
                entry = next(k for k in kept if k.names == names)
                again = self.fingerprinter.digest([self.recompute(entry.input_NRC)])[0].tolist()
                second.append((names, again))
        everyone: list[Any] = [None] * replicas.size
        dist.all_gather_object(everyone, second, group=replicas.group)
        events = []
        for owner, names, digest, theirs in mismatches:
            again = next((a for n, a in everyone[owner] if n == names), None)
            verifier = verifier_of[owner]
            if again == theirs:
                positions, verdict = [owner], "transient fault on the owner"
            elif again == digest:
                positions, verdict = [owner, verifier], "owner and verifier persistently disagree"
            else:
                positions, verdict = [owner], "the owner's results are unstable"
            events.append(("sdc_owner_mismatch", {
                "ranks": [replicas.ranks[p] for p in positions], "hosts": [replicas.hosts[p] for p in positions],
                "parameters": list(names), "owner": replicas.ranks[owner], "verifier": replicas.ranks[verifier],
                "action": self.config.policy,
                "detail": f"the Newton–Schulz result of {', '.join(names[:3])} computed by its owner "
                          f"{replicas.name(owner)} at step {step} differs from {replicas.name(verifier)}'s "
                          f"recomputation: {verdict}"}))
        return events
