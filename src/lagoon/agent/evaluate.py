"""Evaluating a model on a task set: episodes in parallel, resumable, with a results table.

    OUT/results.jsonl                  one line per finished episode (the metrics file; appended durably)
    OUT/trajectories/<task>.jsonl      each episode's trajectory

A rerun with the same OUT skips every task that already has a line in ``results.jsonl``, so an interrupted
evaluation resumes where it stopped (an episode cut off mid-way is run again from its start).

An evaluation never scores its infrastructure: the grader is checked before the first episode (a missing
pytest costs no model time), and an episode that raises (a `GradingError` when the grader cannot run, a
`SandboxError` when no sandbox can be made) stops the evaluation with that error; episodes not yet started
are cancelled, those in flight finish, and nothing is recorded for the failed one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from lagoon.agent.config import AgentConfig
from lagoon.agent.grading import check_grader, grading_config
from lagoon.agent.harness import run_episode
from lagoon.agent.tasks import Task


def trajectory_name(task_id: str) -> str:
    return task_id.replace("/", "__") + ".jsonl"


def read_results(out_dir: Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / "results.jsonl"
    if not path.is_file():
        return []
    results = []
    for line in path.read_text().splitlines():
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash: that task runs again
    return results


def evaluate(tasks: list[Task], policy, config: AgentConfig, out_dir: str | Path, workers: int = 1,
             tokenizer: Any = None, seed: int | None = None, show_progress: bool = True) -> list[dict[str, Any]]:
    """Run every task not yet in ``out_dir/results.jsonl``; return all results (earlier ones included)."""
    out_dir = Path(out_dir)
    done = {r["task_id"]: r for r in read_results(out_dir)}
    todo = [task for task in tasks if task.id not in done]
    for task in todo:
        if task.kind == "repo":
            check_grader(grading_config(task, config.sandbox))  # once per configuration; GradingError stops here
    (out_dir / "trajectories").mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    results_file = (out_dir / "results.jsonl").open("a")
    fresh: list[dict[str, Any]] = []

    def one(index: int, task: Task) -> dict[str, Any]:
        started = time.monotonic()
        episode = run_episode(task, policy, config, tokenizer=tokenizer,
                              trajectory_path=out_dir / "trajectories" / trajectory_name(task.id),
                              seed=None if seed is None else seed + 1000 * index)
        end = episode.end or {}
        result = {"task_id": task.id, "episode_id": episode.episode_id, "exit_reason": episode.exit_reason,
                  "reward": episode.reward, "resolved": bool(end.get("grade", {}).get("resolved")),
                  "turns": len(episode.turns), "samples": end.get("num_samples"),
                  "completion_tokens": end.get("completion_tokens"), "duration_s": round(time.monotonic() - started, 3),
                  "trajectory": f"trajectories/{trajectory_name(task.id)}"}
        with lock:
            results_file.write(json.dumps(result) + "\n")
            results_file.flush()
            os.fsync(results_file.fileno())
            fresh.append(result)
        return result

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, disable=not show_progress) as progress, ThreadPoolExecutor(max(1, workers)) as pool:
            bar = progress.add_task(f"episodes ({len(done)} done before)", total=len(todo))
            futures = [pool.submit(one, i, task) for i, task in enumerate(todo)]
            solved = 0
            for future in as_completed(futures):
                try:
                    result = future.result()
                except BaseException:
                    for pending in futures:
                        pending.cancel()
                    raise
                solved += bool(result["resolved"])
                progress.update(bar, advance=1, description=f"episodes, {solved} resolved")
    finally:
        results_file.close()
    order = {task.id: i for i, task in enumerate(tasks)}
    merged = {**done, **{r["task_id"]: r for r in fresh}}
    return sorted((r for r in merged.values() if r["task_id"] in order), key=lambda r: order[r["task_id"]])


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(results)
    return {"episodes": n, "resolved": sum(r["resolved"] for r in results),
            "mean_reward": sum(r["reward"] or 0.0 for r in results) / n if n else 0.0,
            "mean_turns": sum(r["turns"] for r in results) / n if n else 0.0,
            "exit_reasons": dict(Counter(r["exit_reason"] for r in results))}


def results_table(results: list[dict[str, Any]], title: str, max_rows: int = 40):
    """A rich table: one row per episode (up to `max_rows`), then the totals."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("task", "exit", "reward", "turns", "tokens", "seconds"):
        table.add_column(column, justify="left" if column in ("task", "exit") else "right")
    for result in results[:max_rows]:
        table.add_row(result["task_id"], result["exit_reason"] or "-", f"{result['reward'] or 0:.2f}", str(result["turns"]),
                      str(result["completion_tokens"] or 0), f"{result['duration_s']:.1f}")
    if len(results) > max_rows:
        table.add_row(f"… {len(results) - max_rows} more", "", "", "", "", "")
    summary = summarize(results)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["exit_reasons"].items(), key=lambda kv: str(kv[0])))
    table.add_section()
    table.add_row(f"resolved {summary['resolved']}/{summary['episodes']}", reasons, f"{summary['mean_reward']:.3f}",
                  f"{summary['mean_turns']:.1f}", "", "")
    return table
