"""Agent tasks: the documented on-disk layout, loading, task sets, and preparing an episode's workspace.

A task is a directory:

    <task>/
      task.toml          id, kind, prompt, [limits], [grading]           (never shown to the agent)
      instruction.md     the problem statement: the agent's first user turn
      workspace/         files copied into the episode's workspace (optional)
      tests/             hidden tests, copied over the agent's final workspace in a fresh sandbox at
                         grading time (kind = "repo"); the agent never sees them
      reference/         a reference solution: files that overlay workspace/ (kept out of the agent's view;
                         used to validate the task)

``task.toml``::

    id = "pybugs/paginate-last-page"
    kind = "repo"                  # "repo": hidden pytest tests; "answer": exact final answer
    prompt = "code"                # system prompt: "code" (repositories) or "arith" (short, for tiny models)
    [limits]                       # optional; any agent.budgets.* or agent.sandbox.* field, per task
    max_steps = 20
    wall_timeout_s = 30
    [grading]
    fail_to_pass = ["tests/test_paginate.py::test_last_partial_page"]   # must fail before, pass after
    pass_to_pass = ["tests/test_paginate.py::test_full_pages"]          # must pass before and after
    timeout_s = 120                # wall clock of the hidden-test run
    # kind = "answer": expected = "449"

Task sets: ``pybugs`` (built in), ``arith-code`` (generated; ``arith-code:n=100,level=2,seed=0``), a
directory of task directories, or one task directory.
"""

from __future__ import annotations

import dataclasses
import shutil
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from lagoon.agent.config import BudgetConfig, SandboxConfig
from lagoon.errors import ConfigError, LagoonError

BUILTIN_SETS = ("pybugs", "arith-code")
_LIMIT_FIELDS = {f.name for f in dataclasses.fields(BudgetConfig)} | {
    f.name for f in dataclasses.fields(SandboxConfig)
    if f.name not in ("backend", "bwrap", "python", "extra_ro_binds", "cgroups")}


@dataclass
class Grading:
    """How a task is graded."""

    fail_to_pass: list[str] = field(default_factory=list)
    """Hidden test ids that fail on the original code and must pass after the agent's changes."""
    pass_to_pass: list[str] = field(default_factory=list)
    """Hidden test ids that pass on the original code and must still pass."""
    expected: str | None = None
    """The exact final answer (kind = "answer")."""
    timeout_s: float = 120.0
    """Wall-clock limit of the hidden-test run."""


@dataclass
class Task:
    """One task: what the agent is told, what it starts with, and how it is graded."""

    id: str
    instruction: str
    kind: Literal["repo", "answer"] = "answer"
    prompt: str = "code"
    limits: dict[str, Any] = field(default_factory=dict)
    grading: Grading = field(default_factory=Grading)
    workspace_dir: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    """Workspace files given inline (generated tasks), written after `workspace_dir` is copied."""
    hidden_tests_dir: Path | None = None
    reference_dir: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def prepare_workspace(self, target: Path) -> Path:
        """Fill a fresh directory with the task's starting files (never the hidden tests or the reference)."""
        target = Path(target)
        target.mkdir(parents=True, exist_ok=True)
        if self.workspace_dir is not None:
            shutil.copytree(self.workspace_dir, target, dirs_exist_ok=True)
        for relative, text in self.files.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return target

    def budgets(self, base: BudgetConfig) -> BudgetConfig:
        """`base` with this task's budget limits applied."""
        own = {k: v for k, v in self.limits.items() if k in {f.name for f in dataclasses.fields(BudgetConfig)}}
        return dataclasses.replace(base, **own)

    def sandbox_config(self, base: SandboxConfig) -> SandboxConfig:
        """`base` with this task's sandbox limits applied."""
        own = {k: v for k, v in self.limits.items() if k in {f.name for f in dataclasses.fields(SandboxConfig)}}
        return dataclasses.replace(base, **own)

    def save(self, directory: Path) -> Path:
        """Write this task in the on-disk layout (used to export generated tasks)."""
        from lagoon.configio import dumps_toml

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        grading = {k: v for k, v in dataclasses.asdict(self.grading).items() if v not in (None, [])}
        data = {"id": self.id, "kind": self.kind, "prompt": self.prompt, "limits": self.limits, "grading": grading}
        if self.metadata:
            data["metadata"] = self.metadata
        (directory / "task.toml").write_text(dumps_toml(data))
        (directory / "instruction.md").write_text(self.instruction)
        if self.workspace_dir is not None or self.files:
            self.prepare_workspace(directory / "workspace")
        for source, name in ((self.hidden_tests_dir, "tests"), (self.reference_dir, "reference")):
            if source is not None:
                shutil.copytree(source, directory / name, dirs_exist_ok=True)
        return directory


def load_task(directory: str | Path) -> Task:
    """Read one task directory, checking its ``task.toml``."""
    directory = Path(directory)
    config_path = directory / "task.toml"
    if not config_path.is_file():
        raise LagoonError(f"{directory} is not a task: it has no task.toml")
    try:
        data = tomllib.loads(config_path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("", f"{config_path} is not valid TOML: {error}") from None
    where = str(config_path)
    unknown = set(data) - {"id", "kind", "prompt", "limits", "grading", "metadata"}
    if unknown:
        raise ConfigError(f"{where}: {sorted(unknown)[0]}", "unknown key")
    kind = data.get("kind", "repo")
    if kind not in ("repo", "answer"):
        raise ConfigError(f"{where}: kind", f"must be \"repo\" or \"answer\", got {kind!r}")
    limits = dict(data.get("limits", {}))
    bad = set(limits) - _LIMIT_FIELDS
    if bad:
        raise ConfigError(f"{where}: limits.{sorted(bad)[0]}", "is not an agent.budgets or agent.sandbox limit")
    grading_data = dict(data.get("grading", {}))
    known = {f.name for f in dataclasses.fields(Grading)}
    if set(grading_data) - known:
        raise ConfigError(f"{where}: grading.{sorted(set(grading_data) - known)[0]}", "unknown key")
    grading = Grading(**grading_data)
    instruction_path = directory / "instruction.md"
    if not instruction_path.is_file():
        raise LagoonError(f"task {directory} has no instruction.md")
    if kind == "repo" and not (directory / "tests").is_dir():
        raise LagoonError(f"task {directory} is kind \"repo\" but has no hidden tests/ directory")
    if kind == "repo" and not grading.fail_to_pass:
        raise ConfigError(f"{where}: grading.fail_to_pass", "a repo task needs at least one fail-to-pass test")
    if kind == "answer" and grading.expected is None:
        raise ConfigError(f"{where}: grading.expected", "an answer task needs the expected answer")
    return Task(
        id=str(data.get("id", directory.name)), instruction=instruction_path.read_text(), kind=kind,
        prompt=str(data.get("prompt", "code")), limits=limits, grading=grading,
        workspace_dir=directory / "workspace" if (directory / "workspace").is_dir() else None,
        hidden_tests_dir=directory / "tests" if (directory / "tests").is_dir() else None,
        reference_dir=directory / "reference" if (directory / "reference").is_dir() else None,
        metadata=dict(data.get("metadata", {})))


def builtin_dir(name: str) -> Path:
    """The directory of a built-in, on-disk task set."""
    return Path(str(resources.files("lagoon.agent").joinpath("tasksets", name)))


def parse_options(text: str, where: str) -> dict[str, int]:
    """``n=100,level=2`` → {"n": 100, "level": 2} (the options of a generated task set's spec)."""
    options = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if not value.strip().lstrip("-").isdigit():
            raise LagoonError(f"{where}: option {part!r} must look like key=integer")
        options[key.strip()] = int(value)
    return options


def load_task_set(spec: str) -> list[Task]:
    """Tasks named by `spec`: ``pybugs``, ``arith-code[:n=..,level=..,seed=..]``, or a directory."""
    name, _, options = spec.partition(":")
    if name == "arith-code":
        from lagoon.agent.arith import generate_tasks

        opts = parse_options(options, spec)
        unknown = set(opts) - {"n", "level", "seed"}
        if unknown:
            raise LagoonError(f"{spec}: unknown option {sorted(unknown)[0]!r} (known: n, level, seed)")
        return generate_tasks(n=opts.get("n", 100), level=opts.get("level", 1), seed=opts.get("seed", 0))
    if name == "pybugs" and not options:
        directory = builtin_dir("pybugs")
    else:
        directory = Path(spec)
    if (directory / "task.toml").is_file():
        return [load_task(directory)]
    if not directory.is_dir():
        raise LagoonError(f"no task set {spec!r}: use {', '.join(BUILTIN_SETS)}, a task directory, or a directory of them")
    tasks = [load_task(child) for child in sorted(directory.iterdir()) if (child / "task.toml").is_file()]
    if not tasks:
        raise LagoonError(f"{directory} holds no task directories (each needs a task.toml)")
    return tasks


_parse_options = parse_options  # the name lagoon.rl first imported
