"""The ``[sdc]`` config section: silent-data-corruption checks, their reactions, and fault injection.

    [sdc]
    enabled = true
    interval = 50                 # compare replicas' weight fingerprints every 50 optimizer steps
    policy = "rollback"           # "log", "fail" (exit 91 naming rank and host) or "rollback"
    max_rollbacks = 3
    timeout_s = 600               # a rank that makes no progress this long ends the job (exit 93/94)

    [[sdc.faults]]                # fault injection, for drills and tests
    kind = "bitflip"
    step = 120
    rank = 1
    parameter = "model.layers.0.self_attn.q_proj.weight"
    bit = "exponent"

Checks also run at every checkpoint step (a checkpoint stores only verified weights) and right after
every checkpoint load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lagoon.errors import check

FaultKind = Literal["bitflip", "ns_corrupt", "raise", "hang", "die"]


@dataclass
class FaultSpec:
    """One injected fault: what, where and when."""

    kind: FaultKind = "bitflip"
    """``bitflip``: flip one bit of a parameter after the optimizer step; ``ns_corrupt``: flip one bit of
    a Newton–Schulz result on its owner rank before it is shared (distributed Muon); ``raise``: raise an
    exception; ``hang``: stop making progress forever; ``die``: kill the process (SIGKILL)."""
    step: int = 1
    """The optimizer step at (after) which the fault happens."""
    rank: int = 0
    """The global rank it happens on (for ``ns_corrupt``, only if that rank owns the matrix)."""
    parameter: str = ""
    """``bitflip`` / ``ns_corrupt``: the parameter's name as in ``model.named_parameters()``; empty picks
    the first parameter (bitflip) or the first Muon matrix this rank owns (ns_corrupt)."""
    element: int = 0
    """Flat index of the element whose bit is flipped (in this rank's local shard under FSDP)."""
    bit: str = "exponent"
    """``sign``, ``exponent`` (the lowest exponent bit: the value doubles or halves), ``mantissa`` (the
    lowest mantissa bit: a one-ulp change, invisible to any loss curve) or a bit index such as ``"30"``."""
    repeat: bool = False
    """Fire every time the step is reached, a replay after a rollback included (a persistent fault);
    false fires once (a transient fault)."""

    def validate(self) -> None:
        check(self.step >= 1, "step", f"must be >= 1, got {self.step}")
        check(self.rank >= 0, "rank", f"must be >= 0, got {self.rank}")
        check(self.element >= 0, "element", f"must be >= 0, got {self.element}")
        check(self.bit in ("sign", "exponent", "mantissa") or (self.bit.isdigit() and int(self.bit) < 64), "bit",
              f"must be sign, exponent, mantissa or a bit index 0-63, got {self.bit!r}")


@dataclass
class SDCConfig:
    """Silent-data-corruption checks during `lagoon train`."""

    enabled: bool = True
    """Run the checks (they do nothing in a single-process run except pre-reduction checks and faults)."""
    interval: int = 100
    """Compare the replicas' weight fingerprints every this many optimizer steps (and at every checkpoint
    step). At the default, a check costs well under 0.5% of step time (benchmarks/sdc_overhead.py)."""
    policy: Literal["log", "fail", "rollback"] = "rollback"
    """What a detected corruption does: ``log`` records and counts it and trains on; ``fail`` ends the
    job with exit code 91 and a line naming the faulty rank(s) and host(s) (for a scheduler to exclude
    the node); ``rollback`` restores the last verified checkpoint and continues, up to `max_rollbacks`."""
    max_rollbacks: int = 3
    """Rollbacks (and replays for escalation) before the job ends with exit code 92; also capped by
    ``train.max_rollbacks``."""
    escalate: bool = True
    """When the vote cannot name the faulty rank (two replicas, or a tie), replay from the last verified
    checkpoint to the same step and compare again: a fault that disappears was transient (and the rank
    whose own pre-reduction loss and gradients first differ from the replay is named, or, when nothing
    shows it, every replica as a suspect with ``localized = false``); one that persists ends the job
    (exit 91)."""
    lanes: int = 4
    """32-bit lanes per fingerprint (1–8); 4 gives 128-bit fingerprints."""
    kernel: Literal["auto", "native", "compiled", "torch"] = "auto"
    """Fingerprint implementation: auto = the C kernel on CPU and a compiled torch kernel on GPUs."""
    timeout_s: float = 600.0
    """Deadline for SDC collectives, and the longest a rank may go without passing an optimizer step
    before the watchdog ends the job naming the hung (exit 93) or dead (exit 94) rank. Must exceed the
    longest step, evaluation or checkpoint save."""
    watchdog: bool = True
    """Run the background watchdog (needs the job's rendezvous store; torchrun provides one)."""

    owner_verify_every: int = 10
    """Distributed Muon: every this many steps, a second rank recomputes sampled owners' Newton–Schulz
    results and compares fingerprints (0 disables it)."""
    owner_verify_samples: int = 2
    """Matrices re-verified per verification step."""

    nonfinite_check: bool = True
    """Before the gradient reduction, count NaN/Inf in each rank's local gradients and name the ranks
    that produced them."""
    grad_spike_factor: float = 10.0
    """Flag a rank whose local gradient norm exceeds this multiple of its running mean (0 disables)."""
    loss_spike_factor: float = 0.0
    """Flag a step whose loss exceeds this multiple of the running mean loss (0 disables)."""
    skip_spikes: bool = False
    """Skip the update of a step flagged by the loss-spike or non-finite check (the batch is dropped)."""
    spike_warmup: int = 20
    """Steps of history before spike detection starts."""
    spike_ema: float = 0.9
    """Decay of the running means used by spike detection."""

    faults: list[FaultSpec] = field(default_factory=list)
    """Faults to inject (drills and tests); see `FaultSpec`."""

    def validate(self) -> None:
        check(self.interval >= 1, "interval", f"must be >= 1, got {self.interval}")
        check(self.max_rollbacks >= 0, "max_rollbacks", f"must be >= 0, got {self.max_rollbacks}")
        check(1 <= self.lanes <= 8, "lanes", f"must be between 1 and 8, got {self.lanes}")
        check(self.timeout_s > 0, "timeout_s", f"must be positive, got {self.timeout_s}")
        check(self.owner_verify_every >= 0, "owner_verify_every", f"must be >= 0, got {self.owner_verify_every}")
        check(self.owner_verify_samples >= 1, "owner_verify_samples", f"must be >= 1, got {self.owner_verify_samples}")
        check(self.grad_spike_factor == 0 or self.grad_spike_factor > 1, "grad_spike_factor",
              f"must be 0 (off) or > 1, got {self.grad_spike_factor}")
        check(self.loss_spike_factor == 0 or self.loss_spike_factor > 1, "loss_spike_factor",
              f"must be 0 (off) or > 1, got {self.loss_spike_factor}")
        check(self.spike_warmup >= 1, "spike_warmup", f"must be >= 1, got {self.spike_warmup}")
        check(0 < self.spike_ema < 1, "spike_ema", f"must be in (0, 1), got {self.spike_ema}")
