"""One replica check: fingerprint every parameter where it lives, all-gather the table, vote.

    checker = ReplicaChecker(replicas, Fingerprinter(lanes=4))
    result = checker.check(model, step)         # a collective over the replicate group
    result.verdict.agreed, result.verdict.faulty_replicas()

The whole model's digests travel as one [P, L] int64 tensor (P parameters, L lanes) in one all-gather.
When replicas disagree, every replica fingerprints again and the tables are gathered once more: a
replica whose digest of *unchanged* weights changed had a fault in the check itself (`check_faults`),
and the second vote is the one that counts.

Also here: the digest string a checkpoint stores (``train_state/state.json``, ``sdc_digest``) and the
comparison of restored weights against it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from lagoon.sdc.fingerprint import Fingerprinter
from lagoon.sdc.inject import local_tensor
from lagoon.sdc.replicas import ReplicaGroup
from lagoon.sdc.vote import Verdict, compare_runs, vote

DIGEST_FORMAT = "lagoon-sdc/1"


@dataclass
class CheckResult:
    step: int
    names: list[str]
    local: torch.Tensor
    """This replica's digests [P, L]."""
    gathered: torch.Tensor
    """Every replica's digests [W, P, L] (the second gather when a recheck happened)."""
    verdict: Verdict
    first_verdict: Verdict | None = None
    """The vote before the recheck, when there was one."""
    check_faults: list[int] = field(default_factory=list)
    """Replica positions whose fingerprint of the same weights changed between the two computations."""
    seconds: float = 0.0


def model_tensors(model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    """Parameter names and the tensors to fingerprint (a DTensor's local shard)."""
    names, tensors = [], []
    for name, param in model.named_parameters():
        names.append(name)
        tensors.append(local_tensor(param.detach()))
    return names, tensors


class ReplicaChecker:
    def __init__(self, replicas: ReplicaGroup, fingerprinter: Fingerprinter):
        self.replicas = replicas
        self.fingerprinter = fingerprinter

    def digest(self, model: nn.Module) -> tuple[list[str], torch.Tensor]:
        names, tensors = model_tensors(model)
        return names, self.fingerprinter.digest(tensors)

    def check(self, model: nn.Module, step: int) -> CheckResult:
        """Fingerprint, gather, vote (and recheck once on disagreement). Every replica must call it."""
        started = time.perf_counter()
        names, local = self.digest(model)
        gathered = self.replicas.all_gather(local, "fingerprint gather", step)
        verdict = vote(gathered, names)
        result = CheckResult(step=step, names=names, local=local, gathered=gathered, verdict=verdict)
        if not verdict.agreed:
            _, again = self.digest(model)
            regathered = self.replicas.all_gather(again, "fingerprint re-gather", step)
            result.first_verdict = verdict
            result.check_faults = compare_runs(gathered, regathered)
            result.local, result.gathered, result.verdict = again, regathered, vote(regathered, names)
        result.seconds = time.perf_counter() - started
        return result


# --------------------------------------------------------------------------------------------------
# The digest a checkpoint carries


def table_hash(table: torch.Tensor) -> str:
    """A short name for a whole [P, L] digest table (to say in events that two states are the same bits)."""
    return hashlib.sha256(table.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def names_hash(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def encode_digest(names: list[str], table: torch.Tensor) -> str:
    """``lagoon-sdc/1:L:NAMES_HASH:HEX`` — the verified [P, L] table, 8 hex digits per lane, row-major."""
    lanes = table.shape[1]
    body = "".join(f"{int(v):08x}" for v in table.reshape(-1).tolist())
    return f"{DIGEST_FORMAT}:{lanes}:{names_hash(names)}:{body}"


def decode_digest(text: str) -> tuple[str, torch.Tensor] | None:
    """(names hash, [P, L] table) of an encoded digest, or None if `text` is not one."""
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) != 4 or parts[0] != DIGEST_FORMAT or not parts[1].isdigit():
        return None
    lanes, body = int(parts[1]), parts[3]
    if lanes == 0 or len(body) % (8 * lanes):
        return None
    values = [int(body[i : i + 8], 16) for i in range(0, len(body), 8)]
    return parts[2], torch.tensor(values, dtype=torch.int64).reshape(-1, lanes)


def differing_parameters(names: list[str], table: torch.Tensor, encoded: str) -> list[str] | None:
    """Parameters whose digest differs from the encoded one; None when the encoding does not apply
    (another format, another lane count or another parameter list)."""
    decoded = decode_digest(encoded)
    if decoded is None:
        return None
    stored_hash, stored = decoded
    if stored_hash != names_hash(names) or stored.shape != table.shape:
        return None
    differs = (stored != table).any(dim=1)
    return [names[i] for i in differs.nonzero().flatten().tolist()]
