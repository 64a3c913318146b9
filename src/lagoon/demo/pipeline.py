"""Run the main job stage by stage, resumably.

``RUN/pipeline.json`` records each finished stage with its wall time and summary. A rerun skips finished
stages (their summaries feed later stages) and resumes an interrupted one, which each stage supports on its
own (the data build, the sweep, training and RL all continue from what they wrote). The config the run
started with is kept in ``RUN/config.toml``; a rerun with a different config (apart from ``[demo]``) is
refused, because the finished stages would no longer match it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from lagoon.configio import dumps_toml, to_dict
from lagoon.demo.config import STAGES
from lagoon.demo.stages import STAGE_FUNCTIONS, Context, require_transformers
from lagoon.errors import LagoonError

STATE_FILE = "pipeline.json"
CONFIG_FILE = "config.toml"


def _digest(config: dict[str, Any]) -> str:
    relevant = {key: value for key, value in config.items() if key != "demo"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _started_with(run_dir: Path) -> str | None:
    """Digest of the config the run started with, read back through today's config classes (so a field
    added to lagoon since, with its default, does not count as a change)."""
    import tomllib

    from lagoon.config import LagoonConfig
    from lagoon.configio import from_dict
    from lagoon.errors import ConfigError

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return _digest(to_dict(from_dict(LagoonConfig, tomllib.loads(path.read_text()))))
    except (ConfigError, tomllib.TOMLDecodeError) as error:
        raise LagoonError(f"{path} no longer reads as a lagoon config ({error}); use a new --run-dir") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(json.dumps(data, indent=2, default=str) + "\n")
    staging.replace(path)


def run_pipeline(config, run_dir: str | Path, say=print, only: list[str] | None = None) -> dict[str, Any]:
    """Run the stages ``config.demo.stages`` (or `only`) in `run_dir`; returns the pipeline state."""
    from rich.console import Console

    console = Console()
    run_dir = Path(run_dir)
    data = to_dict(config)
    digest = _digest(data)
    state_path = run_dir / STATE_FILE
    state: dict[str, Any] = {"stages": {}}
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if _started_with(run_dir) != digest:
            raise LagoonError(f"{run_dir} was started with a different config (see {run_dir / CONFIG_FILE}); "
                              f"use a new --run-dir, or the same config to resume")
    results = {name: entry["summary"] for name, entry in state["stages"].items() if entry.get("status") == "done"}
    stages = sorted(set(only), key=STAGES.index) if only else config.demo.stages
    if "evaluate" in stages and "evaluate" not in results:
        require_transformers(config)
    # Every configured stage before one that runs must have finished, or run first in this invocation.
    for name in stages:
        before = [s for s in config.demo.stages if STAGES.index(s) < STAGES.index(name)]
        missing = [s for s in before if s not in results and s not in stages]
        if missing:
            raise LagoonError(f"stage {name} needs {', '.join(missing)} finished first in {run_dir}; "
                              f"run without --only, or add {' '.join(missing)} to --only")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / CONFIG_FILE).is_file():
        (run_dir / CONFIG_FILE).write_text(dumps_toml(data))
    ctx = Context(config=data, run_dir=run_dir, say=say, results=results)
    started = time.monotonic()
    ran = False
    for index, name in enumerate(stages, start=1):
        heading = f"[{index}/{len(stages)}] {name}"
        # A finished stage is skipped; the report is rewritten only when a stage before it ran now (its page
        # would be stale) or when it is asked for by name (--only report).
        rewrite = name == "report" and (ran or (only is not None and "report" in only))
        if name in results and not rewrite:
            console.rule(f"{heading}: done earlier ({state['stages'][name]['seconds']:.0f} s), skipped")
            continue
        ran = True
        console.rule(heading)
        stage_started = time.monotonic()
        summary = STAGE_FUNCTIONS[name](ctx)
        seconds = time.monotonic() - stage_started
        results[name] = summary
        state["stages"][name] = {"status": "done", "seconds": seconds, "summary": summary,
                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_json(state_path, state)
        say(f"{name} finished in {seconds:.0f} s")
    total = sum(entry["seconds"] for entry in state["stages"].values())
    say(f"pipeline finished: {len(state['stages'])} stages, {total / 60:.1f} min of stage time "
        f"({(time.monotonic() - started) / 60:.1f} min this invocation); report: {run_dir / 'report.html'}")
    return state


__all__ = ["STAGES", "run_pipeline"]
