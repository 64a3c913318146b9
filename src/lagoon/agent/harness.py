"""The code-as-action agent loop, the same for a person trying a model and for RL actors.

    episode = run_episode(task, policy, agent_config)          # policy: ChatClient or CompletionsClient

Each turn the model replies; one code block runs in the task's sandbox and its output comes back as the
next user turn; ``ANSWER: …`` ends the episode (see `lagoon.agent.prompts`). Budgets (steps, completion
tokens, wall time, consecutive format errors, and in token-in/token-out mode the context length) stop it
otherwise, each with its own exit reason. In token-in/token-out mode the prompt's length is known
exactly, so each turn asks for at most what is left of the served model's context (``max_model_len``
from the server's ``/v1/models``) as well as of the budgets; an episode whose context is full ends as
``context_exhausted`` (the model's limit) or ``max_context_tokens`` (the budget's), never as a
server error. Every turn is appended to the trajectory file before the next
begins. After the episode the task is graded (hidden tests in a fresh sandbox, or the exact answer).

Modes: ``chat`` sends messages to any OpenAI-compatible endpoint; ``tito`` keeps the exact token ids of
every turn against lagoon's engine (`lagoon.agent.tito`), for RL.
"""

from __future__ import annotations

import datetime
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from lagoon.agent.actions import Action, parse_reply
from lagoon.agent.clients import ChatClient, CompletionsClient, PolicyError
from lagoon.agent.config import AgentConfig
from lagoon.agent.grading import Grade, grade
from lagoon.agent.prompts import format_error_message, format_observation, system_prompt
from lagoon.agent.sandbox import Sandbox, SandboxError
from lagoon.agent.tasks import Task
from lagoon.agent.trajectory import SCHEMA, Episode, TrajectoryWriter
from lagoon.agent.workspace import remove_tree

EXIT_REASONS = ("submitted", "max_steps", "max_tokens", "max_wall_s", "max_format_errors", "max_context_tokens",
                "context_exhausted", "model_error", "sandbox_error")

_CONTEXT_LENGTHS: "weakref.WeakKeyDictionary[Any, int | None]" = weakref.WeakKeyDictionary()


def model_context_length(policy) -> int | None:
    """The served model's context length in tokens (``max_model_len`` in ``/v1/models``, as lagoon serve and
    vLLM report it), asked once per client; None when the server does not say."""
    known = getattr(policy, "max_model_len", None)
    if isinstance(known, int):
        return known
    if policy in _CONTEXT_LENGTHS:
        return _CONTEXT_LENGTHS[policy]
    import httpx

    length = None
    try:
        models = httpx.get(f"{policy.base_url}/models", timeout=30).json().get("data", [])
        entry = next((m for m in models if m.get("id") == getattr(policy, "model", None)), models[0] if models else {})
        length = int(entry["max_model_len"]) if entry.get("max_model_len") else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        length = None
    _CONTEXT_LENGTHS[policy] = length
    return length


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def run_episode(task: Task, policy: ChatClient | CompletionsClient, config: AgentConfig | None = None, *,
                tokenizer: Any = None, trajectory_path: str | Path | None = None, workspace: str | Path | None = None,
                keep_workspace: bool = False, episode_id: str | None = None, seed: int | None = None,
                do_grade: bool = True) -> Episode:
    """Run one episode of `task` with `policy`; returns the `Episode` (also written to `trajectory_path`).

    Token-in/token-out mode (a `CompletionsClient`) needs the model's `tokenizer`. `seed` (else
    ``config.sampling.seed``) seeds turn t's sampling with seed + t. The workspace is a temporary directory
    unless given; it is deleted afterwards unless `keep_workspace`. Without a `trajectory_path` the
    trajectory is written next to the temporary workspace and deleted with it (the returned `Episode`
    holds every record).
    """
    config = config or AgentConfig()
    budgets = task.budgets(config.budgets)
    sandbox_config = task.sandbox_config(config.sandbox)
    mode = policy.mode
    if mode == "tito" and tokenizer is None:
        raise ValueError("token-in/token-out mode needs the model's tokenizer")
    if mode == "chat" and config.observation_role != "user":
        raise ValueError("chat mode sends observations as user turns (observation_role = \"user\")")
    episode_id = episode_id or uuid.uuid4().hex
    seed = config.sampling.seed if seed is None else seed
    owns_workspace = workspace is None
    root = Path(tempfile.mkdtemp(prefix="lagoon-episode-")) if owns_workspace else Path(workspace)
    work = task.prepare_workspace(root / "workspace" if owns_workspace else root)
    trajectory_path = Path(trajectory_path) if trajectory_path else root / "trajectory.jsonl"
    writer = TrajectoryWriter(trajectory_path)
    started = time.monotonic()
    try:
        sandbox = Sandbox(work, sandbox_config)
        messages = [{"role": "system", "content": system_prompt(task.prompt, sandbox.workdir)},
                    {"role": "user", "content": task.instruction}]
        header = {"type": "episode", "schema": SCHEMA, "episode_id": episode_id, "task_id": task.id, "mode": mode,
                  "model": policy.describe(), "sampling": config.sampling.__dict__ | {"seed": seed},
                  "budgets": budgets.__dict__, "sandbox": {k: v for k, v in sandbox_config.__dict__.items()},
                  "observation_role": config.observation_role, "messages": [dict(m) for m in messages],
                  "started_at": _now()}
        writer.write(header)
        episode = Episode(header=header)
        loop = _Loop(task, policy, config, budgets, sandbox, messages, tokenizer, seed, writer, episode, started)
        exit_reason, submission = loop.run()
        grade_started = time.monotonic()
        verdict = Grade(0.0, False, {"skipped": "not graded"})
        if do_grade and exit_reason != "sandbox_error":
            # A grader that cannot run raises GradingError: an infrastructure failure, never a reward of 0.
            verdict = grade(task, work, submission, sandbox_config)
        end = {"type": "end", "exit_reason": exit_reason, "reward": verdict.reward, "grade": verdict.to_dict(),
               "submission": submission, "num_turns": len(episode.turns), "num_samples": loop.num_samples(),
               "completion_tokens": loop.completion_tokens,
               "timings": {"total_s": round(time.monotonic() - started, 4), "generate_s": round(loop.generate_s, 4),
                           "execute_s": round(loop.execute_s, 4), "grade_s": round(time.monotonic() - grade_started, 4)},
               "finished_at": _now()}
        if loop.error:
            end["error"] = loop.error
        if keep_workspace:
            end["workspace"] = str(work)
        writer.write(end)
        episode.end = end
        return episode
    finally:
        writer.close()
        if not keep_workspace:
            # A temporary root holds the workspace and, when no trajectory path was given, the trajectory:
            # the returned Episode carries every record, so nothing is left behind.
            remove_tree(root if owns_workspace else work)


class _Loop:
    """One episode's turn loop; keeps the counters its budgets need."""

    def __init__(self, task, policy, config, budgets, sandbox, messages, tokenizer, seed, writer, episode, started):
        self.task, self.policy, self.config, self.budgets = task, policy, config, budgets
        self.sandbox, self.messages, self.seed = sandbox, messages, seed
        self.writer, self.episode, self.started = writer, episode, started
        self.context = None
        if policy.mode == "tito":
            from lagoon.agent.tito import TitoContext

            self.context = TitoContext(tokenizer, messages, config.sampling.enable_thinking)
        self.completion_tokens = 0
        self.generate_s = self.execute_s = 0.0
        self.error: str | None = None

    def num_samples(self) -> int:
        return 0 if self.context is None else self.context.sample + 1

    def _over_budget(self, step: int, format_errors: int) -> str | None:
        if step >= self.budgets.max_steps:
            return "max_steps"
        if self.completion_tokens >= self.budgets.max_tokens:
            return "max_tokens"
        if time.monotonic() - self.started >= self.budgets.max_wall_s:
            return "max_wall_s"
        if format_errors >= self.budgets.max_format_errors:
            return "max_format_errors"
        return None

    def run(self) -> tuple[str, str | None]:
        step, format_errors = 0, 0
        while True:
            reason = self._over_budget(step, format_errors)
            if reason:
                return reason, None
            record: dict[str, Any] = {"type": "turn", "index": step}
            generate_started = time.monotonic()
            try:
                text = self._generate(record, step)
            except _ContextFull as full:
                return full.reason, None
            except PolicyError as error:
                self.error = str(error)
                return "model_error", None
            record["timings"] = {"generate_s": round(time.monotonic() - generate_started, 4)}
            self.generate_s += record["timings"]["generate_s"]
            action = parse_reply(text)
            record["action"] = action.to_dict()
            if action.kind == "submit":
                self._finish_turn(record, observation=None)
                return "submitted", action.answer
            if action.kind == "code":
                format_errors = 0
                try:
                    observation = self._execute(action, record)
                except SandboxError as error:
                    self.error = str(error)
                    self._finish_turn(record, observation=None)
                    return "sandbox_error", None
            else:
                format_errors += 1
                observation = format_error_message(action.error or "unreadable reply")
            self._finish_turn(record, observation)
            step += 1

    def _generate(self, record: dict[str, Any], step: int) -> str:
        sampling = self.config.sampling
        seed = None if self.seed is None else self.seed + step
        remaining = self.budgets.max_tokens - self.completion_tokens
        if self.context is None:
            reply = self.policy.chat(self.messages, sampling, seed=seed)
            record.update(completion_text=reply.text, finish_reason=reply.finish_reason, usage=reply.usage)
            if reply.reasoning:
                record["reasoning"] = reply.reasoning
            # Endpoints that report no usage are charged ~4 characters a token, so the budget still binds.
            self.completion_tokens += reply.usage.get("completion_tokens") or max(1, len(reply.text) // 4)
            self.messages.append({"role": "assistant", "content": reply.text})
            return reply.text
        context = self.context
        room = self.budgets.max_context_tokens - len(context.ids)
        if room <= 0:
            raise _ContextFull("max_context_tokens")
        model_length = model_context_length(self.policy)
        if model_length is not None:
            # The server refuses prompt + max_tokens past its context: ask only for what is left.
            room = min(room, model_length - len(context.ids))
            if room <= 0:
                raise _ContextFull("context_exhausted")
        max_tokens = min(sampling.max_tokens_per_turn, remaining, room)
        if max_tokens <= 0:
            raise _ContextFull("max_tokens")
        sample = context.sample
        prompt_len = len(context.ids)
        generation = self.policy.generate(context.ids, sampling, max_tokens, seed=seed)
        record.update(sample=sample, prompt_ids=context.take_prompt_ids(), prompt_len=prompt_len,
                      completion_ids=generation.token_ids, logprobs=generation.logprobs,
                      finish_reason=generation.finish_reason, policy_versions=generation.policy_versions)
        if generation.routed_experts is not None:
            record["routed_experts"] = generation.routed_experts.to_record()
        self.completion_tokens += len(generation.token_ids)
        text = context.add_completion(generation.token_ids)
        record["completion_text"] = text
        self.messages[:] = context.messages
        return text

    def _execute(self, action: Action, record: dict[str, Any]) -> str:
        # An action may not outlive the episode's wall-clock budget.
        remaining = self.budgets.max_wall_s - (time.monotonic() - self.started)
        timeout = max(0.1, min(self.sandbox.config.wall_timeout_s, remaining))
        result = self.sandbox.run_code(action.language, action.code, timeout_s=timeout)
        self.execute_s += result.duration_s
        record["execution"] = {k: v for k, v in result.to_dict().items() if k not in ("stdout", "stderr")}
        record["timings"]["execute_s"] = round(result.duration_s, 4)
        return format_observation(result)

    def _finish_turn(self, record: dict[str, Any], observation: str | None) -> None:
        record["observation"] = observation
        if observation is not None:
            if self.context is not None:
                record["prefix"] = self.context.add_observation(observation, self.config.observation_role).to_dict()
                self.messages[:] = self.context.messages
            else:
                self.messages.append({"role": self.config.observation_role, "content": observation})
        self.writer.write(record)
        self.episode.turns.append(record)


class _ContextFull(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
