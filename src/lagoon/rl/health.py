"""Infrastructure failures of an RL run, counted apart from the model's own failures, and where they stop it.

An episode can go wrong for two kinds of reason:

- the model's: it never answered (format errors, step, token or context budgets) or answered wrongly — that
  is the learning signal, and it is trained on;
- the infrastructure's (`infra_kind`): the inference server failed or timed out (exit reason
  ``model_error``: the *server* erred, not the model), the sandbox could not run an action
  (``sandbox_error``), or the harness itself raised; and after a group is finished, its append to the
  trajectory table can fail.

Actors retry what is safe to retry — an episode that failed on infrastructure (it has no effect until its
group is appended; ``rl.actor.infra_retries``) and an append (idempotent by trajectory id), with backoff —
and count every failure by kind. ``rl.actor.max_consecutive_infra_failures`` failures in a row, with no
episode completing and no append landing in between, mean the infrastructure is broken rather than
flaky: the actor then appends what it can, writes why, and stops with one line and exit code 3
(`EXIT_INFRASTRUCTURE`). Groups it could not append are not lost: their slots are not marked done, so
the next start of that actor runs them again.

Each actor keeps ``RUN_DIR/actors/actor-I.health.json`` (rewritten atomically):

    {"episodes": completed episodes, "model_failures": those that ended without an answer for the
     model's own reasons, "infra": {"server": n, "sandbox": n, "harness": n, "append": n},
     "retries": episode attempts run again, "consecutive": infrastructure failures in a row,
     "last_error": "...", "stopped": null | "the one-line reason", "time": unix seconds}

The trainer reads these while it waits for data (`TrainerWatch`): when every actor has stopped for its
infrastructure (or is past the threshold), it stops too, with one line, instead of waiting forever. Its
metrics lines carry the totals (``infra/server``, ``infra/sandbox``, ``infra/harness``, ``infra/append``,
``infra/retries``, ``episodes``, ``episodes_model_failed``), and the RL report shows them per actor.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from lagoon.errors import LagoonError

EXIT_INFRASTRUCTURE = 3
INFRA_KINDS = ("server", "sandbox", "harness", "append")
HEALTH_SUFFIX = ".health.json"
MODEL_SIDE_EXITS = {"max_steps", "max_tokens", "max_wall_s", "max_format_errors", "max_context_tokens",
                    "context_exhausted", "unfinished"}
"""Exit reasons of an episode the harness ran to its end without an answer: the model's doing."""


class InfrastructureError(LagoonError):
    """The run's infrastructure (servers, sandboxes, the trajectory table) keeps failing; exit code 3."""

    exit_code = EXIT_INFRASTRUCTURE


def infra_kind(outcome: Any) -> str | None:
    """Which part of the infrastructure an episode's outcome (an `Episode`, or the exception running it raised)
    failed on: ``server``, ``sandbox``, ``harness`` — or None when the episode ran to the model's conclusion."""
    from lagoon.agent.clients import PolicyError
    from lagoon.agent.sandbox import SandboxError

    if isinstance(outcome, BaseException):
        if isinstance(outcome, SandboxError):
            return "sandbox"
        if isinstance(outcome, PolicyError):
            return "server"
        return "harness"
    reason = (getattr(outcome, "end", None) or {}).get("exit_reason")
    return {"model_error": "server", "sandbox_error": "sandbox"}.get(reason)


def describe(outcome: Any) -> str:
    if isinstance(outcome, BaseException):
        text = str(outcome).strip().splitlines()
        return f"{type(outcome).__name__}: {text[0] if text else ''}"[:300]
    end = getattr(outcome, "end", None) or {}
    return f"{end.get('exit_reason')}: {str(end.get('error', '')).strip()[:280]}"


class ActorHealth:
    """One actor's counters and its health file; thread-safe (episodes run on a thread pool)."""

    def __init__(self, path: Path, threshold: int, actor: str):
        self.path, self.threshold, self.actor = Path(path), threshold, actor
        self.lock = threading.Lock()
        self.state: dict[str, Any] = {"episodes": 0, "model_failures": 0, "infra": dict.fromkeys(INFRA_KINDS, 0),
                                      "retries": 0, "consecutive": 0, "last_error": None, "stopped": None}
        if self.path.is_file():  # a restarted actor keeps counting (the counts are the run's)
            try:
                previous = json.loads(self.path.read_text())
                for key in ("episodes", "model_failures", "retries"):
                    self.state[key] = int(previous.get(key, 0))
                for kind in INFRA_KINDS:
                    self.state["infra"][kind] = int(previous.get("infra", {}).get(kind, 0))
            except (ValueError, TypeError, AttributeError):
                pass
        self._write()

    @property
    def tripped(self) -> bool:
        """Past the threshold of infrastructure failures in a row (0: never)."""
        return bool(self.threshold) and self.state["consecutive"] >= self.threshold

    def success(self, model_failed: bool | None = None) -> None:
        """An episode ran to the model's conclusion (`model_failed`: without an answer), or an append landed (None)."""
        with self.lock:
            self.state["consecutive"] = 0
            if model_failed is not None:
                self.state["episodes"] += 1
                self.state["model_failures"] += int(model_failed)
            self._write()

    def failure(self, kind: str, error: str, retrying: bool = False) -> None:
        assert kind in INFRA_KINDS, kind
        with self.lock:
            self.state["infra"][kind] += 1
            self.state["retries"] += int(retrying)
            self.state["consecutive"] += 1
            self.state["last_error"] = f"{kind}: {error}"
            self._write()

    def reason(self) -> str:
        counts = ", ".join(f"{kind} {n}" for kind, n in self.state["infra"].items() if n)
        return (f"{self.actor}: {self.state['consecutive']} infrastructure failures in a row (rl.actor."
                f"max_consecutive_infra_failures = {self.threshold}; so far {counts}); last: {self.state['last_error']}")

    def stop(self, reason: str) -> None:
        with self.lock:
            self.state["stopped"] = reason
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        staging.write_text(json.dumps({**self.state, "time": time.time()}) + "\n")
        staging.replace(self.path)


# ------------------------------------------------------------------------------------------- readers
def read_health(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """actor id → its health file, for every actor of the run that has one."""
    found = {}
    for path in sorted((Path(run_dir) / "actors").glob(f"*{HEALTH_SUFFIX}")):
        try:
            found[path.name[: -len(HEALTH_SUFFIX)]] = json.loads(path.read_text())
        except ValueError:
            continue  # being replaced right now; the next read sees it
    return found


def totals(health: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The run's counters, summed over the actors (the keys the trainer's metrics lines carry)."""
    out = {f"infra/{kind}": sum(int(h.get("infra", {}).get(kind, 0)) for h in health.values()) for kind in INFRA_KINDS}
    out["infra/retries"] = sum(int(h.get("retries", 0)) for h in health.values())
    out["episodes"] = sum(int(h.get("episodes", 0)) for h in health.values())
    out["episodes_model_failed"] = sum(int(h.get("model_failures", 0)) for h in health.values())
    return out


def broken(health: dict[str, dict[str, Any]], num_actors: int, threshold: int) -> str | None:
    """The one-line reason to stop the run when every actor has stopped for (or is past the threshold of)
    infrastructure failures; None while any actor is still getting episodes through."""
    if len(health) < num_actors or not threshold:
        return None
    stuck = {actor: h for actor, h in health.items()
             if h.get("stopped") or int(h.get("consecutive", 0)) >= threshold}
    if len(stuck) < num_actors:
        return None
    actor, worst = max(stuck.items(), key=lambda item: int(item[1].get("consecutive", 0)))
    return (f"every actor reports only infrastructure failures ({actor}: {worst.get('consecutive')} in a row, "
            f"last: {worst.get('last_error')}); fix the servers, sandbox or table, then rerun to resume")


class TrainerWatch:
    """What the trainer checks while it waits for data, and adds to its metrics lines."""

    def __init__(self, run_dir: str | Path, rl, every_s: float = 2.0):
        self.run_dir, self.rl, self.every_s = Path(run_dir), rl, every_s
        self._checked = 0.0

    def check(self) -> None:
        """Raise `InfrastructureError` when every actor is stuck on infrastructure (read at most every `every_s`)."""
        now = time.monotonic()
        if now - self._checked < self.every_s:
            return
        self._checked = now
        reason = broken(read_health(self.run_dir), self.rl.actor.num_actors, self.rl.actor.max_consecutive_infra_failures)
        if reason is not None:
            raise InfrastructureError(f"trainer stopped waiting for data: {reason}")

    def metrics(self) -> dict[str, int]:
        return totals(read_health(self.run_dir))
