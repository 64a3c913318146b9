"""One rollout: the production agent harness, token-in/token-out against an inference server, as a trajectory.

Actors and the held-out evaluation both come through here, so what is evaluated is exactly what is
trained on: `lagoon.agent.harness.run_episode` with a `CompletionsClient` (token ids in, token ids,
sampling logprobs and policy versions out), graded by the task's grader, in the task's sandbox.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lagoon.agent.clients import RoutedExperts
from lagoon.rl.trajectory import Trajectory, Turn

TRUNCATED = {"max_steps", "max_tokens", "max_wall_s", "max_context_tokens", "context_exhausted"}
"""Exit reasons of an episode cut off by a budget (the model may have been on its way)."""
ERRORED = {"model_error", "sandbox_error"}
"""Exit reasons of an infrastructure failure (not the model's doing)."""


def episode_seed(*parts: Any) -> int:
    """A stable 31-bit sampling seed for one episode."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


class Clients:
    """One token-in/token-out client per (thread, server), round-robin over the servers: `CompletionsClient`
    for lagoon's engine, `VLLMClient` for vLLM. `routed_experts`: ask for the experts chosen per token."""

    def __init__(self, urls: list[str], timeout_s: float, engine: str = "lagoon", routed_experts: bool = False,
                 model: str | None = None):
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout_s = timeout_s
        self.engine = engine
        self.routed_experts = routed_experts
        self.model = model
        self._local = threading.local()
        self._next = itertools.count()

    def get(self):
        from lagoon.agent.clients import CompletionsClient, VLLMClient

        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        url = self.urls[next(self._next) % len(self.urls)]
        if url not in clients:
            if self.engine == "vllm":
                clients[url] = VLLMClient(url, model=self.model, timeout_s=self.timeout_s)
            else:
                clients[url] = CompletionsClient(f"{url}/v1", timeout_s=self.timeout_s,
                                                 return_routed_experts=self.routed_experts)
        return clients[url]

    @classmethod
    def for_run(cls, rl, urls: list[str]) -> "Clients":
        """The clients an RL run's actors and evaluation use (engine, routed experts for routing replay)."""
        return cls(urls, rl.actor.request_timeout_s, rl.servers.engine, rl.trainer.routing_replay,
                   rl.servers.served_model_name)


def run_rollout(task, clients: Clients, tokenizer, agent_config, seed: int):
    """Run one episode of `task`; returns the harness's `Episode` (graded)."""
    from lagoon.agent.harness import run_episode

    return run_episode(task, clients.get(), agent_config, tokenizer=tokenizer, seed=seed)


def to_trajectory(episode, *, trajectory_id: str, run_id: str, group_id: str, task_set: str, epoch: int,
                  attempt: int, actor_id: str, started_at: datetime.datetime) -> Trajectory:
    """The table row of a finished token-in/token-out episode."""
    turns = []
    for record in episode.turns:
        if "completion_ids" not in record:
            continue
        completion = record["completion_ids"]
        experts = record.get("routed_experts")
        if experts:
            # The engine reports every token it ran (the whole context it was sent); the table keeps those
            # this turn ran first: from the token before its prompt ids on (from 0 on a sample's first turn).
            before = int(record.get("prompt_len", len(record["prompt_ids"]))) - len(record["prompt_ids"])
            routed = RoutedExperts.from_record(experts)
            rows = routed.array()[before - 1 if before else 0:]
            experts = RoutedExperts.from_array(rows).to_record() if len(rows) else None
        turns.append(Turn(prompt_ids=record["prompt_ids"], completion_ids=completion, logprobs=record["logprobs"],
                          policy_versions=record["policy_versions"], finish_reason=record.get("finish_reason") or "stop",
                          sample=int(record.get("sample", 0)),
                          routed_experts=RoutedExperts.from_record(experts) if experts else None))
    end = episode.end or {}
    exit_reason = end.get("exit_reason") or "unfinished"
    return Trajectory(
        trajectory_id=trajectory_id, run_id=run_id, group_id=group_id, task_set=task_set, task_id=episode.task_id,
        epoch=epoch, attempt=attempt, actor_id=actor_id, turns=turns, reward=float(end.get("reward") or 0.0),
        grader=end.get("grade") or {}, exit_reason=exit_reason, truncated=exit_reason in TRUNCATED,
        errored=exit_reason in ERRORED,
        timings={k: float(v) for k, v in (end.get("timings") or {}).items() if isinstance(v, (int, float))},
        started_at=started_at, finished_at=datetime.datetime.now(datetime.timezone.utc))


@dataclass
class EvalResult:
    reward_mean: float
    episodes: int
    solved: int
    exit_reasons: dict[str, int]
    policy_versions: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"reward_mean": self.reward_mean, "episodes": self.episodes, "solved": self.solved,
                "exit_reasons": self.exit_reasons, "policy_versions": self.policy_versions}


def evaluate(tasks: list, urls: list[str] | Clients, tokenizer, agent_config, attempts: int = 1,
             concurrency: int = 8, seed: int = 0, timeout_s: float = 120.0) -> EvalResult:
    """Mean reward of `attempts` episodes per task against the servers at `urls` (or through `clients`)."""
    clients = urls if isinstance(urls, Clients) else Clients(urls, timeout_s)
    jobs = [(task, attempt) for task in tasks for attempt in range(attempts)]

    def one(job):
        task, attempt = job
        return run_rollout(task, clients, tokenizer, agent_config, episode_seed("eval", seed, task.id, attempt))

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        episodes = list(pool.map(one, jobs))
    rewards = [float((e.end or {}).get("reward") or 0.0) for e in episodes]
    versions = sorted({v for e in episodes for t in e.turns for v in (t.get("policy_versions") or [])})
    return EvalResult(sum(rewards) / max(len(rewards), 1), len(rewards), sum(r >= 1.0 for r in rewards),
                      dict(Counter((e.end or {}).get("exit_reason") for e in episodes)), versions)
