"""Run many small training runs side by side (learning-rate sweeps, seeds, ablations) in a process pool.

    results = run_sweep({"adamw_lr0.002/seed0": config_dict, ...}, "runs/bench/x", workers=2)
    results["adamw_lr0.002/seed0"].eval_bpb

Each run is an ordinary `run_training` run in ``OUT/NAME`` (so it resumes, and a finished one is read
back instantly), executed in a worker process with ``train.num_threads`` threads; a run's log lines go
to ``OUT/NAME/train.log``. `validation_curve` reads a finished run's evaluations back as one number per
evaluation step (the mean bits per byte over capability groups).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lagoon.train.metrics import EVAL_PREFIX, METRICS_FILE, read_jsonl


@dataclass
class SweepResult:
    name: str
    run_dir: Path
    step: int
    loss: float | None
    eval_bpb: dict[str, float]


def _train_one(name: str, config_data: dict[str, Any], run_dir: str) -> SweepResult:
    from lagoon.config import LagoonConfig
    from lagoon.configio import from_dict
    from lagoon.train.loop import run_training

    config = from_dict(LagoonConfig, config_data)
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "train.log", "a") as log, contextlib.redirect_stderr(log):
        result = run_training(config, path)
    return SweepResult(name, path, result.step, result.loss, dict(result.eval_bpb))


def run_sweep(runs: dict[str, dict[str, Any]], out_dir: str | Path, workers: int = 1,
              on_done=None) -> dict[str, SweepResult]:
    """Train every run (name → whole config as plain data) under `out_dir`; `on_done(result)` after each."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out = Path(out_dir)
    results: dict[str, SweepResult] = {}
    context = multiprocessing.get_context("spawn")   # fresh interpreters: no inherited torch thread pools
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool, \
            Progress(TextColumn("[bold]sweep[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                     TimeElapsedColumn()) as progress:
        task = progress.add_task("", total=len(runs))
        futures = {pool.submit(_train_one, name, config, str(out / name)): name for name, config in runs.items()}
        for future in as_completed(futures):
            result = future.result()
            results[result.name] = result
            progress.update(task, advance=1, description=f"{result.name}: loss {result.loss:.3f}")
            if on_done is not None:
                on_done(result)
    return {name: results[name] for name in runs}


def validation_curve(run_dir: str | Path, groups: list[str] | None = None) -> list[tuple[int, float]]:
    """(step, mean held-out bits per byte over `groups` — all evaluated groups by default) per evaluation."""
    curve = []
    for row in read_jsonl(Path(run_dir) / METRICS_FILE):
        values = {k[len(EVAL_PREFIX):]: v for k, v in row.items() if k.startswith(EVAL_PREFIX)}
        if not values:
            continue
        chosen = [values[g] for g in (groups or sorted(values)) if g in values]
        if chosen:
            curve.append((int(row["step"]), sum(chosen) / len(chosen)))
    return curve


def first_step_reaching(curve: list[tuple[int, float]], target: float) -> float | None:
    """The step at which a curve first reaches `target` (linear interpolation between evaluations)."""
    previous = None
    for step, value in curve:
        if value <= target:
            if previous is None or previous[1] == value:
                return float(step)
            (step0, value0) = previous
            return step0 + (value0 - target) / (value0 - value) * (step - step0)
        previous = (step, value)
    return None


def dump_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
