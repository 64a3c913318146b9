"""The trainer's read position in the trajectory table, and the batches it forms from it.

The trainer reads every new append snapshot in order (`TrajectoryStore.read_new`), regroups the rows
into groups (an actor appends whole groups), and queues them FIFO. Each step takes the oldest B groups
that pass the staleness bound; staler ones are dropped and counted. So are groups with tokens from a version
newer than the trainer's: the trainer has not published it, so those weights are not its own (servers that
still held a previous run's or a lost history's weights when they started) and their importance ratios
would be against the wrong policy. `ConsumerState` is what a trainer checkpoint stores as its "data-loader
position":

- ``last_snapshot``: the last snapshot read — everything up to it is either trained, dropped or pending;
- ``pending``: groups read but not yet trained (their rows, as base64 Arrow IPC in the JSON state);
- ``consumed_groups``: per actor, groups trained on or dropped (published for the actors' admission
  control, `lagoon.rl.staleness`).

A trainer restarted from a checkpoint therefore reads on from ``last_snapshot`` with the same pending
queue: no trajectory is skipped and none is trained on twice by the weights that continue the run.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lagoon.rl.staleness import StalenessFilter, staleness
from lagoon.rl.store import TrajectoryStore
from lagoon.rl.trajectory import Trajectory, from_arrow, to_arrow


@dataclass
class Group:
    """The G attempts at one task in one epoch, with the snapshot that delivered them."""

    group_id: str
    actor_id: str
    trajectories: list[Trajectory]
    snapshot_id: int

    @property
    def oldest_version(self) -> int:
        return min(t.policy_version_min for t in self.trajectories)

    @property
    def newest_version(self) -> int:
        return max(t.policy_version_max for t in self.trajectories)


@dataclass
class Batch:
    groups: list[Group]
    dropped: list[Group]
    staleness: list[int]
    """Staleness of every trained trajectory."""
    ahead: int = 0
    """Trajectories among `dropped` sampled (in part) by a version newer than the trainer's."""


@dataclass
class ConsumerState:
    last_snapshot: int | None = None
    pending: list[Group] = field(default_factory=list)
    consumed_groups: dict[str, int] = field(default_factory=dict)
    dropped_groups: int = 0
    trained_groups: int = 0
    dropped_since_step: list[Group] = field(default_factory=list)
    """Groups dropped since the last batch (for that step's metrics; not checkpointed)."""
    ahead_since_step: int = 0
    """Of their trajectories, those from a version newer than the trainer's (not checkpointed)."""

    # ----------------------------------------------------------------------------------------------
    def poll(self, store: TrajectoryStore, max_snapshots: int | None = None) -> int:
        """Queue the groups of every snapshot after `last_snapshot`; returns how many groups arrived."""
        arrived = 0
        for snapshot, trajectories in store.read_new(self.last_snapshot, max_snapshots):
            by_group: dict[str, Group] = {}
            for trajectory in trajectories:
                group = by_group.get(trajectory.group_id)
                if group is None:
                    group = by_group[trajectory.group_id] = Group(trajectory.group_id, trajectory.actor_id, [],
                                                                  snapshot.snapshot_id)
                group.trajectories.append(trajectory)
            for group in by_group.values():
                group.trajectories.sort(key=lambda t: t.attempt)
                self.pending.append(group)
                arrived += 1
            self.last_snapshot = snapshot.snapshot_id
        return arrived

    def take(self, version: int, groups_per_step: int, bound: StalenessFilter) -> Batch | None:
        """The next batch for the trainer at `version` (its newest published version): drop stale groups and
        groups from a newer version, then the oldest B groups (None while fewer than B admissible groups are
        queued)."""
        kept = []
        for group in self.pending:
            ahead = group.newest_version > version
            if not ahead and bound.admit(version, group.oldest_version):
                kept.append(group)
            else:
                self._consumed(group)
                self.dropped_groups += 1
                self.dropped_since_step.append(group)
                self.ahead_since_step += len(group.trajectories) if ahead else 0
        self.pending = kept
        if len(self.pending) < groups_per_step:
            return None
        groups, self.pending = self.pending[:groups_per_step], self.pending[groups_per_step:]
        for group in groups:
            self._consumed(group)
        self.trained_groups += len(groups)
        dropped, self.dropped_since_step = self.dropped_since_step, []
        ahead, self.ahead_since_step = self.ahead_since_step, 0
        return Batch(groups, dropped, [staleness(version, t.policy_version_min) for g in groups for t in g.trajectories],
                     ahead)

    def _consumed(self, group: Group) -> None:
        self.consumed_groups[group.actor_id] = self.consumed_groups.get(group.actor_id, 0) + 1

    def queued_versions(self) -> Counter:
        return Counter(g.oldest_version for g in self.pending)

    # ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rows = [t for g in self.pending for t in g.trajectories]
        buffer = io.BytesIO()
        table = to_arrow(rows)
        with pa.ipc.new_stream(buffer, table.schema) as writer:
            writer.write_table(table)
        return {"last_snapshot": self.last_snapshot, "pending_rows": base64.b64encode(buffer.getvalue()).decode("ascii"),
                "pending_groups": [[g.group_id, g.actor_id, g.snapshot_id] for g in self.pending],
                "consumed_groups": dict(self.consumed_groups), "dropped_groups": self.dropped_groups,
                "trained_groups": self.trained_groups}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "ConsumerState":
        rows = from_arrow(pa.ipc.open_stream(base64.b64decode(state["pending_rows"])).read_all())
        by_group: dict[str, list[Trajectory]] = {}
        for trajectory in rows:
            by_group.setdefault(trajectory.group_id, []).append(trajectory)
        pending = [Group(group_id, actor_id, sorted(by_group[group_id], key=lambda t: t.attempt), snapshot_id)
                   for group_id, actor_id, snapshot_id in state["pending_groups"]]
        return cls(last_snapshot=state["last_snapshot"], pending=pending,
                   consumed_groups=dict(state["consumed_groups"]), dropped_groups=int(state["dropped_groups"]),
                   trained_groups=int(state["trained_groups"]))
