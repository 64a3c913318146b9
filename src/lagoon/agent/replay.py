"""Re-executing a saved trajectory's actions in a fresh sandbox, to check that its observations reproduce."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from lagoon.agent.config import SandboxConfig
from lagoon.agent.prompts import format_observation
from lagoon.agent.sandbox import Sandbox
from lagoon.agent.tasks import Task
from lagoon.agent.trajectory import Episode
from lagoon.agent.workspace import remove_tree


def reexecute(episode: Episode, task: Task) -> list[tuple[int, str, str]]:
    """Run every recorded code action again, in order, on a fresh copy of the task's workspace, under the
    episode's sandbox settings; return (turn, recorded observation, new observation) where they differ."""
    known = {f.name for f in dataclasses.fields(SandboxConfig)}
    config = SandboxConfig(**{k: v for k, v in episode.header.get("sandbox", {}).items() if k in known})
    mismatches = []
    root = Path(tempfile.mkdtemp(prefix="lagoon-replay-"))
    try:
        sandbox = Sandbox(task.prepare_workspace(root / "workspace"), config)
        for turn in episode.turns:
            action = turn.get("action", {})
            if action.get("kind") != "code":
                continue
            observation = format_observation(sandbox.run_code(action["language"], action["code"]))
            if observation != turn.get("observation"):
                mismatches.append((turn["index"], turn.get("observation"), observation))
    finally:
        remove_tree(root)
    return mismatches
