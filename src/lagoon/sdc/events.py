"""SDC events: one JSON line each in DIR/events.jsonl (the run's event log), counted into the metrics.

Every event has ``event`` (below), ``step`` and what it is about (``ranks``, ``hosts``, ``parameters``,
``action``, ``detail``). Kinds:

    sdc_corruption      replicas disagree and the vote named the faulty rank(s)
    sdc_unresolved      replicas disagree with no majority (two replicas, or a tie)
    sdc_transient       a replay made the disagreement vanish; ``ranks`` are where the fault began when
                        ``localized`` is true (``detail``: the evidence), else every suspect (``detail``
                        says why the replicas cannot tell)
    sdc_persistent      the disagreement survived a replay
    sdc_check_fault     recomputing a fingerprint of unchanged weights gave a different result
    sdc_owner_mismatch  a verifier's Newton–Schulz result differs from its owner's
    sdc_nonfinite       a rank's local gradients held NaN/Inf before the reduction
    sdc_grad_spike      a rank's local gradient norm jumped past its running mean
    sdc_loss_spike      the loss jumped past its running mean
    sdc_restore_mismatch  weights loaded from a checkpoint differ from the digest it was verified with
    sdc_fault_injected  a configured fault fired
    sdc_hung / sdc_peer_lost  the watchdog ended the job

Only rank 0 writes (every rank reaches the same verdict, so the lines are the same everywhere).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

EVENTS_FILE = "events.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventLog:
    """Appends SDC events to DIR/events.jsonl (rank 0) and keeps per-kind counts (every rank)."""

    def __init__(self, run_dir: Path | None, active: bool):
        self.path = Path(run_dir) / EVENTS_FILE if run_dir is not None else None
        self.active = active and self.path is not None
        self.counts: Counter[str] = Counter()
        self.recent: list[dict[str, Any]] = []

    def record(self, kind: str, step: int, write: bool | None = None, **fields: Any) -> dict[str, Any]:
        """Count an event and (on rank 0, or wherever `write` says) append it to the file."""
        event = {"event": kind, "step": step, **fields}
        self.counts[kind] += 1
        self.recent.append(event)
        if (self.active if write is None else write) and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(_clean(event)) + "\n")
        return event

    def metrics(self) -> dict[str, float]:
        """Cumulative counts as metrics (``sdc/events``, ``sdc/corruption``, ...)."""
        out = {"sdc/events": float(sum(v for k, v in self.counts.items() if k != "sdc_fault_injected"))}
        for kind, count in self.counts.items():
            out[f"sdc/{kind.removeprefix('sdc_')}"] = float(count)
        return out


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The SDC events of a run directory (other event kinds skipped; a torn last line ignored)."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if str(row.get("event", "")).startswith("sdc_"):
            events.append(row)
    return events
