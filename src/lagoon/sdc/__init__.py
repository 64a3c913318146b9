"""Silent-data-corruption checks: every data-parallel replica must hold the same bits.

    from lagoon.sdc import Fingerprinter, ReplicaGroup, ReplicaChecker, SDCHooks

    digests_PL = Fingerprinter(lanes=4).digest([p for p in model.parameters()])   # on the tensors' devices
    checker = ReplicaChecker(ReplicaGroup.from_group(group, timeout_s=60), Fingerprinter())
    result = checker.check(model, step)          # all-gather + vote; result.verdict.faulty_replicas()
    run_training(config, run_dir, hooks=[SDCHooks(config.sdc)])    # what `lagoon train` does with [sdc]

Modules: `fingerprint` (raw-bit fingerprints; spec, reference and fast kernels), `native` (the C kernel),
`vote` (majority vote, localization), `replicas` (who the replicas are; collectives with a deadline),
`checker` (one check; the checkpoint digest), `hooks` (policies and escalation inside `lagoon train`),
`precheck` (per-rank NaN/Inf, gradient- and loss-spike checks before the reduction), `owner`
(recomputing distributed Muon's owner results), `inject` (fault injection), `watchdog` (hung and dead
ranks), `events` (DIR/events.jsonl), `errors` (exit codes), `config` (the ``[sdc]`` section).

Names are imported lazily so that reading a config does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SDCConfig": "lagoon.sdc.config",
    "FaultSpec": "lagoon.sdc.config",
    "Fingerprinter": "lagoon.sdc.fingerprint",
    "reference_digest": "lagoon.sdc.fingerprint",
    "vote": "lagoon.sdc.vote",
    "Verdict": "lagoon.sdc.vote",
    "ReplicaGroup": "lagoon.sdc.replicas",
    "ReplicaChecker": "lagoon.sdc.checker",
    "CheckResult": "lagoon.sdc.checker",
    "SDCHooks": "lagoon.sdc.hooks",
    "sdc_hooks": "lagoon.sdc.hooks",
    "FaultInjector": "lagoon.sdc.inject",
    "flip_bit": "lagoon.sdc.inject",
    "Watchdog": "lagoon.sdc.watchdog",
    "SDCError": "lagoon.sdc.errors",
    "read_events": "lagoon.sdc.events",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lagoon.sdc' has no attribute {name!r}")
