"""What a report reads: one run directory, or a directory of runs (a sweep or a benchmark).

A *run* is a directory with a ``metrics.jsonl`` (and usually ``events.jsonl``, ``config.toml`` and
``checkpoints/``). `load_runs(path)` returns the run at `path` itself, or every run found below it;
a run's `group` is the path of its parent relative to `path` (e.g. ``muon_lr0.02`` for
``muon_lr0.02/seed1``), so seeds of one setting are drawn as one band.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from lagoon.errors import LagoonError
from lagoon.train.metrics import EVAL_PREFIX, EVENTS_FILE, METRICS_FILE, read_jsonl


@dataclass
class Run:
    path: Path
    name: str
    """Path relative to the report's root ("." for a single run)."""
    group: str
    """Runs with the same group are seeds of one setting."""
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The name tables show: the path below the report's root, or the directory's own name for a single run."""
        return self.path.name if self.name == "." else self.name

    @property
    def is_rl(self) -> bool:
        """An RL trainer's run (`lagoon rl`): its loss is CISPO's surrogate, its tokens the trained completions."""
        return any("staleness_hist" in row or "loss_tokens" in row for row in self.metrics)

    @cached_property
    def events(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / EVENTS_FILE)

    @cached_property
    def config(self) -> dict[str, Any]:
        path = self.path / "config.toml"
        if not path.is_file():
            return {}
        try:
            return tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError:
            return {}

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of every metrics line that has a numeric `key`."""
        steps, values = [], []
        for row in self.metrics:
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "step" in row:
                steps.append(int(row["step"]))
                values.append(float(value))
        return steps, values

    def keys(self) -> set[str]:
        return {key for row in self.metrics for key in row}

    @property
    def eval_groups(self) -> list[str]:
        return sorted(key[len(EVAL_PREFIX):] for key in self.keys() if key.startswith(EVAL_PREFIX))

    def last(self, key: str) -> float | None:
        _, values = self.series(key)
        return values[-1] if values else None

    def checkpoints(self) -> list[str]:
        root = self.path / "checkpoints"
        return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")) if root.is_dir() else []


def load_runs(path: str | Path, include: list[str] | None = None) -> list[Run]:
    """The run at `path`, or every run below it (sorted by name; only groups named in `include` when given).
    Raises if there is none."""
    root = Path(path)
    if not root.is_dir():
        raise LagoonError(f"{root} is not a directory")
    if (root / METRICS_FILE).is_file():
        return [Run(root, ".", ".", read_jsonl(root / METRICS_FILE))]
    runs = []
    for metrics in sorted(root.rglob(METRICS_FILE)):
        run_path = metrics.parent
        name = str(run_path.relative_to(root))
        parent = run_path.parent.relative_to(root)
        group = str(parent) if str(parent) != "." else name
        if include is None or group in include:
            runs.append(Run(run_path, name, group, read_jsonl(metrics)))
    if not runs:
        raise LagoonError(f"{root} has no {METRICS_FILE} (nor any run directory below it); is it a run directory?")
    return runs
