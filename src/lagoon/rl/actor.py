"""An actor: pull task slots, run G attempts of each with the current policy, grade, filter, append.

    lagoon rl actor CONFIG --run-dir DIR --index I [--server URL ...]

Loop: take the next slot of this actor (`lagoon.rl.tasks.TaskStream`); wait until the admission rule
allows another outstanding group (`lagoon.rl.staleness`, with the trainer's progress read from the table's
properties); run the group's G episodes concurrently with the production harness in token-in/token-out
mode (`lagoon.rl.rollout`), each turn recording the policy version that sampled it; when a group is
complete, drop errored (and, if configured, truncated) episodes and zero-variance groups; append the kept
groups to the Iceberg table in batches. Every trajectory id is the deterministic id of its (run, epoch,
task, attempt) slot, so an append retried after a crash never duplicates rows.

Infrastructure failures (`lagoon.rl.health`): an episode that failed on the server, the sandbox or the
harness is run again (``rl.actor.infra_retries``); a failed append is retried with backoff, never dropped;
both are counted apart from the model's own failures in ``RUN_DIR/actors/actor-I.health.json``; past
``rl.actor.max_consecutive_infra_failures`` failures in a row the actor appends what it can and stops with
one line and exit code 3.

Crash safety: what was appended is committed (an Iceberg snapshot); episodes in flight when an actor
dies are lost and their slots are run again by the restarted actor (same index), which skips the slots
its log or the table shows as done.

Log: ``RUN_DIR/actors/actor-I.jsonl`` — one line per finished group (all of them, kept or filtered:
rewards, policy versions, exit reasons, timings) and per append (snapshot, rows written, seconds).
"""

from __future__ import annotations

import datetime
import json
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lagoon.errors import LagoonError
from lagoon.rl.advantages import zero_variance
from lagoon.rl.health import HEALTH_SUFFIX, MODEL_SIDE_EXITS, ActorHealth, InfrastructureError, describe, infra_kind
from lagoon.rl.rollout import Clients, episode_seed, run_rollout, to_trajectory
from lagoon.rl.staleness import actor_budget, admissible
from lagoon.rl.store import TrajectoryStore
from lagoon.rl.tasks import Slot, TaskStream, agent_config, training_tasks
from lagoon.rl.trajectory import Trajectory, group_id_of, make_trajectory_id

PROGRESS_REFRESH_S = 0.5
RETRY_BACKOFF_S = (0.5, 10.0)
"""First and longest wait before retrying an episode or an append (doubling in between)."""


def backoff(attempt: int) -> float:
    first, longest = RETRY_BACKOFF_S
    return min(longest, first * 2 ** attempt)


def actor_id(index: int) -> str:
    return f"actor-{index}"


def run_id_of(config, run_dir: Path) -> str:
    return config.rl.run_id or Path(run_dir).resolve().name


def tokenizer_dir_of(config) -> Path:
    return Path(config.rl.tokenizer or config.rl.init_checkpoint)


@dataclass
class RunningGroup:
    slot: Slot
    started: float
    started_at: datetime.datetime
    futures: list[Future] = field(default_factory=list)


class Actor:
    def __init__(self, config, run_dir: str | Path, index: int, servers: list[str], say=print):
        from lagoon.infer.tokenizer import Tokenizer

        rl = config.rl
        self.config = config
        self.run_dir = Path(run_dir)
        self.index = index
        self.id = actor_id(index)
        self.run_id = run_id_of(config, self.run_dir)
        self.say = say
        self.num_actors = rl.actor.num_actors
        if not 0 <= index < self.num_actors:
            raise LagoonError(f"actor index {index} is outside 0..{self.num_actors - 1} (rl.actor.num_actors)")
        self.group_size = rl.tasks.group_size
        self.tasks = training_tasks(config)
        self.task_set = rl.tasks.task_set
        self.stream = TaskStream(self.tasks, rl.tasks.epochs, rl.tasks.seed, rl.tasks.shuffle)
        self.tokenizer = Tokenizer.from_dir(tokenizer_dir_of(config))
        self.agent = agent_config(config)
        self.clients = Clients.for_run(rl, servers)
        self.store = TrajectoryStore(rl.table, self.run_dir)
        self.budget = actor_budget(rl.trainer.max_staleness, rl.trainer.groups_per_step, self.num_actors)
        self.log_path = self.run_dir / "actors" / f"{self.id}.jsonl"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.health = ActorHealth(self.run_dir / "actors" / f"{self.id}{HEALTH_SUFFIX}",
                                  rl.actor.max_consecutive_infra_failures, self.id)
        self._append_failures = 0
        self._append_after = 0.0
        self.stop = threading.Event()
        self.buffer: list[list[Trajectory]] = []
        self.running: list[RunningGroup] = []
        self._pending_records: list[dict[str, Any]] = []
        self._progress: dict[str, Any] = {}
        self._progress_at = 0.0
        self.done = self._done_slots()
        self.appended = self._appended_groups()
        self.started = time.perf_counter()

    # ----------------------------------------------------------------------------------------------
    def _done_slots(self) -> set[int]:
        """Slots finished before (this actor's log) — a restarted actor does not redo them."""
        done = set()
        if self.log_path.is_file():
            for line in self.log_path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("type") == "group" and (record.get("kept") is False or record.get("appended")):
                    done.add(int(record["slot"]))
        written = self.store.group_ids(run_id=self.run_id, actor_id=self.id)
        found = 0
        for index in range(self.index, len(self.stream), self.num_actors):
            if found == len(written):
                break
            slot = self.stream.slot(index)
            if group_id_of(self.run_id, slot.epoch, slot.task.id) in written:
                done.add(index)
                found += 1
        return done

    def _appended_groups(self) -> int:
        return len(self.store.group_ids(run_id=self.run_id, actor_id=self.id))

    def _log(self, record: dict[str, Any]) -> None:
        with self.log_path.open("a") as handle:
            handle.write(json.dumps({"time": time.time(), "elapsed_s": time.perf_counter() - self.started,
                                     "actor": self.id, **record}) + "\n")

    def progress(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._progress_at > PROGRESS_REFRESH_S:
            self._progress = self.store.progress()
            self._progress_at = now
        return self._progress

    def admissible(self) -> int:
        progress = self.progress()
        consumed = int(progress.get("consumed_groups", {}).get(self.id, 0))
        return admissible(self.budget, self.appended + len(self.buffer), consumed, len(self.running))

    def trainer_finished(self) -> bool:
        progress = self.progress()
        return bool(progress) and progress.get("version", 0) >= progress.get("total_steps", float("inf"))

    # ----------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Work until the task stream ends, the trainer finishes, or `stop` is set; returns counters."""
        rl = self.config.rl
        self._log({"type": "start", "appended": self.appended, "done_slots": len(self.done), "budget": self.budget})
        self.say(f"{self.id}: starting ({self.appended} groups already appended, budget {self.budget} outstanding)")
        slots = (s for s in self.stream.slots_of(self.index, self.num_actors) if s.index not in self.done)
        next_slot = next(slots, None)
        capacity = max(rl.actor.concurrent_episodes, self.group_size)
        with ThreadPoolExecutor(max_workers=rl.actor.concurrent_episodes, thread_name_prefix=self.id) as pool:
            while not self.stop.is_set():
                if self.health.tripped:
                    self.stop.set()   # running episodes end at their next attempt; nothing new starts
                    break
                self._collect()
                if next_slot is None and not self.running:
                    break
                if self.trainer_finished():
                    break
                episodes_running = sum(1 for g in self.running for f in g.futures if not f.done())
                if (next_slot is not None and episodes_running + self.group_size <= capacity
                        and self.admissible() > 0):
                    self._start(pool, next_slot)
                    next_slot = next(slots, None)
                    continue
                time.sleep(0.02)
            for group in self.running:
                for future in group.futures:
                    future.cancel()
        self._collect_finished()
        self._flush(force=True)   # raises InfrastructureError if the table stays broken
        if self.health.tripped:
            reason = self.health.reason()
            self.health.stop(reason)
            self._log({"type": "infra_stop", "reason": reason})
            raise InfrastructureError(reason)
        self._log({"type": "stop", "appended": self.appended})
        return {"appended_groups": self.appended}

    def _start(self, pool: ThreadPoolExecutor, slot: Slot) -> None:
        group = RunningGroup(slot, time.perf_counter(), datetime.datetime.now(datetime.timezone.utc))
        for attempt in range(self.group_size):
            seed = episode_seed(self.run_id, slot.epoch, slot.task.id, attempt)
            group.futures.append(pool.submit(self._episode, slot, attempt, seed))
        self.running.append(group)

    def _episode(self, slot: Slot, attempt: int, seed: int):
        """One episode; run again (same seed) while it fails on the infrastructure, up to `infra_retries` times."""
        retries = self.config.rl.actor.infra_retries
        outcome = None
        for trial in range(retries + 1):
            if self.stop.is_set():
                return outcome
            try:
                outcome = run_rollout(slot.task, self.clients, self.tokenizer, self.agent, seed)
            except Exception as error:  # a harness bug must not take the actor down; it counts as infrastructure
                outcome = error
            kind = infra_kind(outcome)
            if kind is None:
                reason = (outcome.end or {}).get("exit_reason")
                self.health.success(model_failed=reason in MODEL_SIDE_EXITS)
                return outcome
            again = trial < retries and not self.health.tripped
            self.health.failure(kind, describe(outcome), retrying=again)
            if not again:
                return outcome
            self.stop.wait(backoff(trial))
        return outcome

    def _collect(self) -> None:
        self._collect_finished()
        self._flush(force=False)

    def _collect_finished(self) -> None:
        finished = [g for g in self.running if all(f.done() for f in g.futures)]
        for group in finished:
            self.running.remove(group)
            self._finish(group)

    def _finish(self, group: RunningGroup) -> None:
        slot = group.slot
        group_id = group_id_of(self.run_id, slot.epoch, slot.task.id)
        trajectories, errors = [], []
        infra: dict[str, int] = {}
        for attempt, future in enumerate(group.futures):
            episode = None if future.cancelled() else future.result()
            kind = "cancelled" if episode is None else infra_kind(episode)
            if kind is not None:
                infra[kind] = infra.get(kind, 0) + 1
            if episode is None or isinstance(episode, Exception):
                errors.append(repr(episode))
                continue
            trajectories.append(to_trajectory(
                episode, trajectory_id=make_trajectory_id(self.run_id, slot.epoch, slot.task.id, attempt),
                run_id=self.run_id, group_id=group_id, task_set=self.task_set, epoch=slot.epoch, attempt=attempt,
                actor_id=self.id, started_at=group.started_at))
        actor = self.config.rl.actor
        rewards_all = [t.reward for t in trajectories]
        kept = [t for t in trajectories if not (actor.drop_errored and t.errored)
                and not (actor.drop_truncated and t.truncated) and t.turns]
        reason = None
        if len(kept) < 2:
            reason = "too_few_valid"
        elif actor.filter_zero_variance and zero_variance([t.reward for t in kept]):
            reason = "zero_variance"
        record = {"type": "group", "slot": slot.index, "epoch": slot.epoch, "task_id": slot.task.id,
                  "group_id": group_id, "rewards": rewards_all,
                  "reward_mean": sum(rewards_all) / len(rewards_all) if rewards_all else 0.0,
                  "policy_versions": [t.policy_version_min for t in trajectories],
                  "exit_reasons": [t.exit_reason for t in trajectories], "errors": errors[:3], "infra": infra,
                  "errored": sum(t.errored for t in trajectories) + len(errors),
                  "truncated": sum(t.truncated for t in trajectories),
                  "completion_tokens": sum(len(u.completion_ids) for t in trajectories for u in t.turns),
                  "group_s": time.perf_counter() - group.started, "kept": reason is None, "reason": reason}
        if reason is None:
            self.buffer.append(kept)
            self._pending_records.append(record)
        elif reason == "too_few_valid" and infra:
            # Lost to the infrastructure (or cut short by a stop), not filtered on the model's merits: the slot is
            # left undone, so the next start of this actor runs it again.
            self._log({**record, "kept": None, "reason": "stopped" if "cancelled" in infra else "infrastructure"})
        else:
            self._log(record)

    def _flush(self, force: bool) -> None:
        """Append the buffered groups as one snapshot (every `append_every_groups`, or now if `force`).

        A failed append keeps the buffer and is retried with backoff (the ids make it idempotent). With
        `force` (the actor is stopping) it is retried until it lands or the failures in a row reach the
        threshold; then `InfrastructureError` says how many groups were not appended (their slots are not
        marked done, so the next start of this actor runs them again)."""
        while self.buffer:
            if not force and (len(self.buffer) < self.config.rl.actor.append_every_groups
                              or time.monotonic() < self._append_after):
                return
            if self._try_append():
                continue
            if not force:
                return
            if self.health.tripped:
                reason = (f"{self.health.reason()}; {len(self.buffer)} finished group(s) could not be appended to the "
                          f"trajectory table (their slots run again when this actor restarts)")
                self.health.stop(reason)
                self._log({"type": "infra_stop", "reason": reason})
                raise InfrastructureError(reason)
            time.sleep(max(0.0, self._append_after - time.monotonic()))

    def _try_append(self) -> bool:
        rows = [t for group in self.buffer for t in group]
        started = time.perf_counter()
        try:
            result = self.store.append(rows, actor_id=self.id, groups=len(self.buffer))
        except Exception as error:  # keep the buffer; the retry appends the same ids
            wait = backoff(self._append_failures)
            self._append_failures += 1
            self._append_after = time.monotonic() + wait
            text = str(error).strip().splitlines()
            self.health.failure("append", f"{type(error).__name__}: {text[0][:250] if text else ''}", retrying=True)
            self._log({"type": "append_failed", "groups": len(self.buffer), "error": str(error)[:300],
                       "retry_in_s": wait})
            return False
        self._append_failures = 0
        self.health.success()
        written_groups = len({t.group_id for t in rows if t.trajectory_id not in set(result.skipped)})
        self.appended += written_groups
        for record in self._pending_records:
            self._log({**record, "appended": True, "snapshot_id": result.snapshot_id})
        self._log({"type": "append", "groups": len(self.buffer), "written": result.written,
                   "skipped": len(result.skipped), "snapshot_id": result.snapshot_id, "conflicts": result.conflicts,
                   "append_s": time.perf_counter() - started})
        self.buffer, self._pending_records = [], []
        return True


def run_actor(config, run_dir: Path, index: int, servers: list[str]) -> dict[str, Any]:
    """`lagoon rl actor`: run until done; SIGTERM/SIGINT stop it after appending what is finished."""
    actor = Actor(config, run_dir, index, servers)

    def stop(signum, frame):
        actor.stop.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return actor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
