"""DIR/metrics.jsonl: one JSON object per line per logged step; DIR/events.jsonl: resumes, rollbacks, skips.

Keys of a metrics line (absent when not measured at that step):

    step            optimizer steps completed (1 after the first update)
    loss            token-weighted mean next-token cross-entropy of the step's global batch (nats)
    aux_loss        sum of enabled router losses (load balance, z-loss), when any is enabled
    lr              the Muon (or sole) learning rate used by this step's update; lr_scale its schedule factor
    grad_norm       global gradient norm before clipping
    tokens          training tokens consumed so far (all ranks)
    tokens_per_s    training throughput of this step (all ranks)
    max_load        busiest expert's load ÷ mean load, averaged over MoE layers (1.0 is perfect balance)
    min_load        idlest expert's load ÷ mean load
    eval_bpb/GROUP  held-out bits per byte of capability group GROUP (evaluation steps)
    elapsed_s       wall-clock seconds since this process started training

Lines are flushed as they are written, so a killed run loses at most the line in flight; a resumed run
first drops lines past the step it resumes from, so the file always describes one consistent history.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
EVAL_PREFIX = "eval_bpb/"


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity; write them as strings a reader can still recognise."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of `path` (a torn last line from a killed writer is ignored)."""
    if not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_after(path: Path, step: int) -> None:
    """Keep only the lines with step ≤ `step` (atomically: write a copy, then rename)."""
    if not path.is_file():
        return
    kept = [json.dumps(row) for row in read_jsonl(path) if int(row.get("step", 0)) <= step]
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text("".join(line + "\n" for line in kept))
    staging.replace(path)


class MetricsWriter:
    """Appends metrics and event lines; inactive (writes nothing) on ranks other than 0."""

    def __init__(self, run_dir: Path, active: bool):
        self.active = active
        self.metrics_path = Path(run_dir) / METRICS_FILE
        self.events_path = Path(run_dir) / EVENTS_FILE
        self._handle = None

    def resume_at(self, step: int) -> None:
        if self.active:
            self.close()
            truncate_after(self.metrics_path, step)

    def write(self, row: dict[str, Any]) -> None:
        if not self.active:
            return
        if self._handle is None:
            self._handle = self.metrics_path.open("a")
        self._handle.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._handle.flush()

    def event(self, kind: str, **fields: Any) -> None:
        if not self.active:
            return
        with self.events_path.open("a") as handle:
            handle.write(json.dumps({"event": kind, **{k: _clean(v) for k, v in fields.items()}}) + "\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
