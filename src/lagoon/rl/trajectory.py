"""One agent episode as the trainer sees it, and its row in the Iceberg trajectory table.

The table contract (docs/INTERFACES.md, "Trajectory table") — one row per trajectory:

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
        sample            int                the token sequence this turn extends (see below)
        prompt_ids        list<int>          token ids appended to the context before this turn's generation:
                                             the whole rendered prompt on a sample's first turn, else the
                                             framing of the previous observation
        completion_ids    list<int>          the exact token ids the server returned (token-out)
        logprobs          list<float>        the sampler's log-probability of each completion token (μ)
        loss_mask         list<boolean>      train on this completion token (false: e.g. a forced suffix)
        policy_versions   list<long>         the weights version that sampled each completion token (one
                                             entry per token, or a single entry for the whole turn)
        finish_reason     string             "stop" | "length" | "abort" | ...
        routed_experts    struct, nullable   the experts each sparse layer chose for the tokens this turn ran
                                             first, for routing replay: ``dtype`` ("uint8" for ≤ 256 experts,
                                             else "uint16"), ``shape`` [tokens, layers, k], ``data`` (the raw
                                             little-endian array: 1 byte per id for ≤ 256 experts). Tokens: from
                                             the previous turn's last completion token (or the sample's first
                                             token) up to this turn's completion but its last token; layers:
                                             the model's sparse layers (lagoon) or all layers (vLLM), in order
    reward              double             the grader's scalar reward
    grader              string             the grader's details as JSON
    exit_reason         string             why the episode ended (the harness's: "submitted", "max_steps", ...)
    truncated, errored  boolean            the episode hit a length/turn limit; the harness or sandbox failed
    timings             map<string,double> seconds spent per phase (generation, sandbox, grading, total)
    started_at          timestamptz        when the episode started
    finished_at         timestamptz        when it ended

Token ids are stored as the server produced them and never re-tokenized, so a multi-turn episode stays
exactly on-policy. Within a sample, the context the server saw at turn t is the concatenation of
``prompt_ids + completion_ids`` of the sample's earlier turns followed by turn t's ``prompt_ids`` — the
token-in/token-out harness keeps the context growing by appending, so storage stays linear in the
episode's length. The harness starts a new sample only when it had to re-render the context (the
record of `lagoon.agent.trajectory`); each sample is one training sequence (`Trajectory.sequences`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lagoon.agent.clients import RoutedExperts

SCHEMA_VERSION = "2"   # 2: turns carry routed_experts


@dataclass
class Turn:
    """One model call of an episode, in token ids."""

    prompt_ids: list[int]
    """Ids appended to the sample's context before this call (the whole prompt on the sample's first turn)."""
    completion_ids: list[int]
    logprobs: list[float]
    policy_versions: list[int]
    """Version of each completion token, or a single version for the whole turn."""
    loss_mask: list[bool] | None = None
    finish_reason: str = "stop"
    sample: int = 0
    routed_experts: RoutedExperts | None = None
    """Experts chosen per token and sparse layer while the engine ran this turn (see the table contract)."""

    def __post_init__(self) -> None:
        if isinstance(self.policy_versions, int):
            self.policy_versions = [self.policy_versions]
        if self.loss_mask is None:
            self.loss_mask = [True] * len(self.completion_ids)
        assert len(self.logprobs) == len(self.completion_ids), "one sampler logprob per completion token"
        assert len(self.loss_mask) == len(self.completion_ids), "one loss-mask entry per completion token"
        assert self.policy_versions, "every turn records the policy version that sampled it"
        assert len(self.policy_versions) in (1, len(self.completion_ids)), \
            "one policy version per completion token, or one for the whole turn"

    @property
    def policy_version(self) -> int:
        """The oldest version that sampled any token of this turn."""
        return min(self.policy_versions)

    def token_versions(self) -> list[int]:
        """The version of each completion token."""
        if len(self.policy_versions) == len(self.completion_ids):
            return list(self.policy_versions)
        return [min(self.policy_versions)] * len(self.completion_ids)


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
    routed_experts: list | None = None
    """Per token, the [layers, k] experts the engine chose for it (None: not recorded), when every turn of the
    sample recorded them; None otherwise."""


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
        return max((max(t.policy_versions) for t in self.turns), default=-1)

    def sequences(self) -> list[Sequence]:
        """One training sequence per sample: its turns' prompt and completion ids, concatenated.

        The sampled tokens keep exactly the ids and the context they were sampled in; prompt and
        observation tokens are context only (loss mask false).
        """
        sequences: dict[int, Sequence] = {}
        routes: dict[int, list] = {}
        for turn in self.turns:
            current = sequences.setdefault(turn.sample, Sequence([], [], [], []))
            before = len(current.token_ids)
            current.token_ids += list(turn.prompt_ids) + list(turn.completion_ids)
            current.loss_mask += [False] * len(turn.prompt_ids) + [bool(m) for m in turn.loss_mask]
            current.logprobs += [0.0] * len(turn.prompt_ids) + [float(x) for x in turn.logprobs]
            current.policy_versions += [-1] * len(turn.prompt_ids) + turn.token_versions()
            routes.setdefault(turn.sample, [])
            if routes[turn.sample] is not None:
                routes[turn.sample] = _extend_routes(routes[turn.sample], turn, before, len(current.token_ids))
        for sample, sequence in sequences.items():
            sequence.routed_experts = routes.get(sample)
        return [s for _, s in sorted(sequences.items()) if any(s.loss_mask)]


def _extend_routes(routes: list, turn: Turn, before: int, length: int) -> list | None:
    """The sample's per-token experts after `turn` (None once a turn has none): the turn's rows start at the
    token before its prompt ids (the previous completion's last token first ran in this turn's prefill), or
    at 0 on a sample's first turn (see the table contract)."""
    if turn.routed_experts is None:
        return None
    routes = (routes + [None] * length)[:length]
    start = before - 1 if before else 0
    for offset, row in enumerate(turn.routed_experts.array()[: length - start]):
        routes[start + offset] = row
    return routes


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
    pa.field("sample", pa.int32()),
    pa.field("prompt_ids", pa.list_(pa.int32())),
    pa.field("completion_ids", pa.list_(pa.int32())),
    pa.field("logprobs", pa.list_(pa.float32())),
    pa.field("loss_mask", pa.list_(pa.bool_())),
    pa.field("policy_versions", pa.list_(pa.int64())),
    pa.field("finish_reason", pa.string()),
    pa.field("routed_experts", pa.struct([pa.field("dtype", pa.string()), pa.field("shape", pa.list_(pa.int32())),
                                          pa.field("data", pa.binary())])),
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
            "turns": [{"sample": int(u.sample), "prompt_ids": list(map(int, u.prompt_ids)),
                       "completion_ids": list(map(int, u.completion_ids)), "logprobs": [float(x) for x in u.logprobs],
                       "loss_mask": [bool(m) for m in u.loss_mask], "policy_versions": list(map(int, u.policy_versions)),
                       "finish_reason": u.finish_reason,
                       "routed_experts": None if u.routed_experts is None else {
                           "dtype": u.routed_experts.dtype, "shape": list(u.routed_experts.shape),
                           "data": u.routed_experts.data}} for u in t.turns],
            "reward": float(t.reward), "grader": json.dumps(t.grader, default=str), "exit_reason": t.exit_reason,
            "truncated": bool(t.truncated), "errored": bool(t.errored),
            "timings": [(k, float(v)) for k, v in t.timings.items()],
            "started_at": _utc(t.started_at), "finished_at": _utc(t.finished_at),
        })
    return pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)


def _routes(value: dict | None) -> RoutedExperts | None:
    if not value:
        return None
    return RoutedExperts(value["dtype"], list(value["shape"]), bytes(value["data"]))


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
                        policy_versions=u["policy_versions"], loss_mask=u["loss_mask"],
                        finish_reason=u["finish_reason"], sample=u["sample"],
                        routed_experts=_routes(u.get("routed_experts")))
                   for u in row["turns"]],
            reward=row["reward"], grader=json.loads(row["grader"] or "{}"), exit_reason=row["exit_reason"] or "",
            truncated=bool(row["truncated"]), errored=bool(row["errored"]), timings=timings,
            started_at=row.get("started_at"), finished_at=row.get("finished_at"),
        ))
    return out
