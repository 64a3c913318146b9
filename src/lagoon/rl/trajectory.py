"""One agent episode as the trainer sees it, and its row in the Iceberg trajectory table.

The table contract (DESIGN.md, "Trajectory table") — one row per trajectory:

    trajectory_id       string, required   deterministic id of the (run, epoch, task, attempt) slot; writes
                                           are idempotent on it (`make_trajectory_id`)
    run_id              string             the RL run that produced it
    group_id            string             the group of G attempts at one task in one epoch (advantages are
                                           normalized within it)
    task_set, task_id   string             where the task came from (e.g. "arith-code", "arith-code/17")
    epoch, attempt      int                pass over the task set; index of this attempt within its group
    actor_id            string             the actor process that ran it
    policy_version_min  long               oldest / newest policy version that produced any turn
    policy_version_max  long
    turns               list<struct>       one entry per model call, in order:
        prompt_ids        list<int>          the exact token ids sent to the server (token-in)
        completion_ids    list<int>          the exact token ids it returned (token-out)
        logprobs          list<float>        the sampler's log-probability of each completion token (μ)
        loss_mask         list<boolean>      train on this completion token (false: e.g. a forced suffix)
        policy_version    long               the weights version that sampled this turn
        finish_reason     string             "stop" | "length" | ...
    reward              double             the grader's scalar reward
    grader              string             the grader's details as JSON
    exit_reason         string             why the episode ended ("answered", "max_turns", "error", ...)
    truncated, errored  boolean            the episode hit a length/turn limit; the harness or sandbox failed
    timings             map<string,double> seconds spent per phase (generation, sandbox, grading, total)
    started_at          timestamptz        when the episode started
    finished_at         timestamptz        when it ended

Token ids are stored as the server produced them and never re-tokenized, so a multi-turn episode stays
exactly on-policy: turn k+1's prompt normally extends turn k's prompt + completion, and the trainer
rebuilds one sequence from it (see `Trajectory.sequences`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = "1"


@dataclass
class Turn:
    """One model call of an episode, in token ids."""

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    policy_version: int
    loss_mask: list[bool] | None = None
    finish_reason: str = "stop"

    def __post_init__(self) -> None:
        if self.loss_mask is None:
            self.loss_mask = [True] * len(self.completion_ids)
        assert len(self.logprobs) == len(self.completion_ids), "one sampler logprob per completion token"
        assert len(self.loss_mask) == len(self.completion_ids), "one loss-mask entry per completion token"


@dataclass
class Sequence:
    """A training sequence rebuilt from consecutive turns (a prompt plus everything generated after it)."""

    token_ids: list[int]
    """All tokens, prompt first."""
    loss_mask: list[bool]
    """Per token: a sampled completion token to train on."""
    logprobs: list[float]
    """Per token: the sampler's logprob (0 where `loss_mask` is false)."""
    policy_versions: list[int]
    """Per token: the policy version that sampled it (-1 for prompt and environment tokens)."""


@dataclass
class Trajectory:
    """One episode: who ran which task, every turn's token ids and logprobs, the grade and timings."""

    trajectory_id: str
    run_id: str
    group_id: str
    task_set: str
    task_id: str
    epoch: int
    attempt: int
    actor_id: str
    turns: list[Turn]
    reward: float
    grader: dict[str, Any] = field(default_factory=dict)
    exit_reason: str = ""
    truncated: bool = False
    errored: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None

    @property
    def policy_version_min(self) -> int:
        return min((t.policy_version for t in self.turns), default=-1)

    @property
    def policy_version_max(self) -> int:
        return max((t.policy_version for t in self.turns), default=-1)

    def sequences(self) -> list[Sequence]:
        """Training sequences: consecutive turns merge while each prompt extends the previous context.

        With token-in/token-out actors, turn k+1's prompt is turn k's prompt + completion + the new
        environment tokens, so a whole episode is one sequence and the sampled tokens keep exactly the
        ids and contexts they were sampled with. A harness that rewrites its context (e.g. drops old
        turns) breaks the prefix; the episode then yields one sequence per break.
        """
        sequences: list[Sequence] = []
        current: Sequence | None = None
        for turn in self.turns:
            extends = current is not None and turn.prompt_ids[: len(current.token_ids)] == current.token_ids
            if not extends:
                current = Sequence([], [], [], [])
                sequences.append(current)
            new_prompt = turn.prompt_ids[len(current.token_ids):]
            current.token_ids += list(new_prompt) + list(turn.completion_ids)
            current.loss_mask += [False] * len(new_prompt) + [bool(m) for m in turn.loss_mask]
            current.logprobs += [0.0] * len(new_prompt) + [float(x) for x in turn.logprobs]
            current.policy_versions += [-1] * len(new_prompt) + [turn.policy_version] * len(turn.completion_ids)
        return [s for s in sequences if any(s.loss_mask)]


def make_trajectory_id(run_id: str, epoch: int, task_id: str, attempt: int) -> str:
    """The id of one (run, epoch, task, attempt) slot: the same slot always gets the same id, so an
    append that is retried — by the same actor, or by another after a crash — never duplicates it."""
    key = json.dumps([run_id, int(epoch), str(task_id), int(attempt)])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def group_id_of(run_id: str, epoch: int, task_id: str) -> str:
    return hashlib.sha256(json.dumps([run_id, int(epoch), str(task_id)]).encode()).hexdigest()[:24]


# --------------------------------------------------------------------------------------------------
# Arrow form (what pyiceberg writes and what the trainer reads back)

TURN_TYPE = pa.struct([
    pa.field("prompt_ids", pa.list_(pa.int32())),
    pa.field("completion_ids", pa.list_(pa.int32())),
    pa.field("logprobs", pa.list_(pa.float32())),
    pa.field("loss_mask", pa.list_(pa.bool_())),
    pa.field("policy_version", pa.int64()),
    pa.field("finish_reason", pa.string()),
])

ARROW_SCHEMA = pa.schema([
    pa.field("trajectory_id", pa.string(), nullable=False),
    pa.field("run_id", pa.string()),
    pa.field("group_id", pa.string()),
    pa.field("task_set", pa.string()),
    pa.field("task_id", pa.string()),
    pa.field("epoch", pa.int32()),
    pa.field("attempt", pa.int32()),
    pa.field("actor_id", pa.string()),
    pa.field("policy_version_min", pa.int64()),
    pa.field("policy_version_max", pa.int64()),
    pa.field("turns", pa.list_(TURN_TYPE)),
    pa.field("reward", pa.float64()),
    pa.field("grader", pa.string()),
    pa.field("exit_reason", pa.string()),
    pa.field("truncated", pa.bool_()),
    pa.field("errored", pa.bool_()),
    pa.field("timings", pa.map_(pa.string(), pa.float64())),
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
])


def _utc(value: datetime.datetime | None) -> datetime.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def to_arrow(trajectories: list[Trajectory]) -> pa.Table:
    """Rows in the table's Arrow schema."""
    rows = []
    for t in trajectories:
        rows.append({
            "trajectory_id": t.trajectory_id, "run_id": t.run_id, "group_id": t.group_id, "task_set": t.task_set,
            "task_id": t.task_id, "epoch": t.epoch, "attempt": t.attempt, "actor_id": t.actor_id,
            "policy_version_min": t.policy_version_min, "policy_version_max": t.policy_version_max,
            "turns": [{"prompt_ids": list(map(int, u.prompt_ids)), "completion_ids": list(map(int, u.completion_ids)),
                       "logprobs": [float(x) for x in u.logprobs], "loss_mask": [bool(m) for m in u.loss_mask],
                       "policy_version": int(u.policy_version), "finish_reason": u.finish_reason} for u in t.turns],
            "reward": float(t.reward), "grader": json.dumps(t.grader, default=str), "exit_reason": t.exit_reason,
            "truncated": bool(t.truncated), "errored": bool(t.errored),
            "timings": [(k, float(v)) for k, v in t.timings.items()],
            "started_at": _utc(t.started_at), "finished_at": _utc(t.finished_at),
        })
    return pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)


def from_arrow(table: pa.Table) -> list[Trajectory]:
    """Trajectories from rows of the table (any column order; extra columns ignored)."""
    out = []
    for row in table.to_pylist():
        timings = row.get("timings") or []
        timings = dict(timings) if isinstance(timings, list) else dict(timings)
        out.append(Trajectory(
            trajectory_id=row["trajectory_id"], run_id=row["run_id"], group_id=row["group_id"],
            task_set=row["task_set"], task_id=row["task_id"], epoch=row["epoch"], attempt=row["attempt"],
            actor_id=row["actor_id"],
            turns=[Turn(prompt_ids=u["prompt_ids"], completion_ids=u["completion_ids"], logprobs=u["logprobs"],
                        policy_version=u["policy_version"], loss_mask=u["loss_mask"], finish_reason=u["finish_reason"])
                   for u in row["turns"]],
            reward=row["reward"], grader=json.loads(row["grader"] or "{}"), exit_reason=row["exit_reason"] or "",
            truncated=bool(row["truncated"]), errored=bool(row["errored"]), timings=timings,
            started_at=row.get("started_at"), finished_at=row.get("finished_at"),
        ))
    return out
