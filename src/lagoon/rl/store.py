"""The trajectory table: an Apache Iceberg table (pyiceberg) that actors append to and the trainer scans.

- **Catalog.** A SQLite catalog with a local warehouse under ``RUN_DIR/trajectories/`` by default; any
  SQLAlchemy URI, or an Iceberg REST catalog (``[rl.table] catalog = "rest"``) for runs spread over
  machines. Any Iceberg engine (pyiceberg, Spark, Trino, DuckDB) can query the table while a run is live.
- **Appends** are batched (one snapshot per batch) and **idempotent**: every trajectory has a deterministic
  id (`lagoon.rl.trajectory.make_trajectory_id`), and before committing, the writer drops the ids the table
  already holds. Commits are optimistic — pyiceberg's own retry (which would rebase the append without
  re-checking) is turned off on this table, and the writer re-checks the ids after every conflict, so a
  batch retried after a crash, or raced by a second writer of the same slot, never duplicates a row.
- **Snapshot properties** of each append: ``lagoon.policy-version-min``/``-max`` (the policy versions in
  the batch), ``lagoon.actor-id``, ``lagoon.groups``, ``lagoon.trajectories``, ``lagoon.run-id``.
- **Incremental scans**: `read_new(after)` returns the rows of every append snapshot after ``after``, oldest
  first, with the snapshot each came from; the trainer stores the last snapshot it consumed in its
  checkpoint, so a restarted trainer neither skips nor repeats data.
- **Trainer progress** (policy version, groups consumed per actor, last consumed snapshot) is published
  as table properties ``lagoon.trainer.*``; actors read it for admission control (`lagoon.rl.staleness`).
- **Snapshot expiry** (`expire`) removes snapshots older than a consumer's checkpointed position,
  always keeping the newest few. Appends never delete data, so expiry removes metadata only.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from lagoon.errors import LagoonError
from lagoon.rl.config import TableConfig
from lagoon.rl.trajectory import ARROW_SCHEMA, SCHEMA_VERSION, Trajectory, from_arrow, to_arrow

PROGRESS_PREFIX = "lagoon.trainer."
_T = TypeVar("_T")


@dataclass
class SnapshotInfo:
    """One append snapshot of the table."""

    snapshot_id: int
    parent_id: int | None
    sequence_number: int
    timestamp_ms: int
    properties: dict[str, str]

    @property
    def groups(self) -> int:
        return int(self.properties.get("lagoon.groups", 0))


@dataclass
class AppendResult:
    """What one `append` did."""

    snapshot_id: int | None
    """The new snapshot (None when every trajectory was already in the table)."""
    written: int
    """Trajectories written."""
    skipped: list[str] = field(default_factory=list)
    """Ids that were already in the table (a retried append)."""
    conflicts: int = 0
    """Concurrent commits that forced a re-check and retry."""


def catalog_properties(config: TableConfig, run_dir: Path) -> dict[str, str]:
    """pyiceberg catalog properties for `config`, with the run-local SQLite defaults filled in."""
    properties = dict(config.properties)
    if config.catalog == "sql":
        root = (Path(run_dir) / "trajectories").resolve()
        properties["type"] = "sql"
        # timeout: seconds a writer waits for SQLite's lock instead of failing at once.
        properties["uri"] = config.uri or f"sqlite:///{root / 'catalog.db'}?timeout=60"
        properties["warehouse"] = config.warehouse or f"file://{root / 'warehouse'}"
        properties.setdefault("init_catalog_tables", "true")
    else:
        properties["type"] = "rest"
        properties["uri"] = config.uri
        if config.warehouse:
            properties["warehouse"] = config.warehouse
    return properties


def _retry(action: Callable[[], _T], what: str, attempts: int = 40) -> _T:
    """Run `action`, retrying transient catalog failures (a busy SQLite file) with jittered backoff."""
    from sqlalchemy.exc import OperationalError

    for attempt in range(attempts):
        try:
            return action()
        except OperationalError as error:  # "database is locked" under many concurrent writers
            if attempt == attempts - 1:
                raise LagoonError(f"{what}: the trajectory catalog stayed busy: {error}") from None
            time.sleep(min(2.0, 0.02 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


class TrajectoryStore:
    """Appends to, scans and maintains the trajectory table. Safe to use from many processes at once."""

    def __init__(self, config: TableConfig, run_dir: str | Path, create: bool = True):
        from pyiceberg.catalog import load_catalog
        from pyiceberg.exceptions import NoSuchTableError

        self.config = config
        self.identifier = f"{config.namespace}.{config.name}"
        if config.catalog == "sql":
            (Path(run_dir) / "trajectories" / "warehouse").mkdir(parents=True, exist_ok=True)
        properties = catalog_properties(config, Path(run_dir))
        try:
            self.catalog = _retry(lambda: load_catalog("lagoon", **properties), "opening the catalog")
        except (OSError, ValueError) as error:
            raise LagoonError(f"cannot open the trajectory catalog ({properties['uri']}): {error}") from None
        try:
            self.table = _retry(lambda: self.catalog.load_table(self.identifier), "loading the table")
        except NoSuchTableError:
            if not create:
                raise LagoonError(f"the trajectory table {self.identifier} does not exist; start the run first") from None
            self.table = _retry(self._create, "creating the table")
        # Ids known to be in the table, and the snapshot they are complete through (see `_known`).
        self._known_ids: set[str] = set()
        self._known_through: int | None = None
        self._known_loaded = False

    def _create(self):
        self.catalog.create_namespace_if_not_exists(self.config.namespace)
        return self.catalog.create_table_if_not_exists(
            self.identifier, schema=ARROW_SCHEMA,
            properties={
                # lagoon re-checks trajectory ids after a conflict; pyiceberg's retry would rebase blindly.
                "commit.retry.num-retries": "0",
                "write.parquet.compression-codec": "zstd",
                "lagoon.schema-version": SCHEMA_VERSION,
            })

    def refresh(self) -> None:
        self.table = _retry(lambda: self.catalog.load_table(self.identifier), "loading the table")

    # ----------------------------------------------------------------------------------------------
    # Appends

    def _known(self) -> set[str]:
        """Every trajectory id in the table as of its current snapshot (updated incrementally)."""
        current = self.table.current_snapshot()
        if current is None:
            return self._known_ids
        if self._known_through == current.snapshot_id:
            return self._known_ids
        scan = None
        if self._known_loaded and self._known_through is not None:
            try:
                scan = self.table.incremental_append_scan(from_snapshot_id_exclusive=self._known_through,
                                                          to_snapshot_id_inclusive=current.snapshot_id,
                                                          selected_fields=("trajectory_id",))
                ids = scan.to_arrow().column("trajectory_id").to_pylist()
            except ValueError:  # our last position was expired: read every id once more
                scan = None
        if scan is None:
            ids = self.table.scan(snapshot_id=current.snapshot_id, selected_fields=("trajectory_id",)) \
                .to_arrow().column("trajectory_id").to_pylist()
            self._known_ids = set()
        self._known_ids.update(ids)
        self._known_through = current.snapshot_id
        self._known_loaded = True
        return self._known_ids

    def append(self, trajectories: list[Trajectory], actor_id: str = "", groups: int | None = None,
               extra_properties: dict[str, str] | None = None) -> AppendResult:
        """Append `trajectories` as one snapshot, skipping any id already in the table."""
        from pyiceberg.exceptions import CommitFailedException

        ids = [t.trajectory_id for t in trajectories]
        assert len(set(ids)) == len(ids), "a batch must not repeat a trajectory id"
        conflicts = 0
        while True:
            self.refresh()
            known = self._known()
            fresh = [t for t in trajectories if t.trajectory_id not in known]
            skipped = [t.trajectory_id for t in trajectories if t.trajectory_id in known]
            if not fresh:
                return AppendResult(None, 0, skipped, conflicts)
            versions = [t.policy_version_min for t in fresh] + [t.policy_version_max for t in fresh]
            properties = {
                "lagoon.policy-version-min": str(min(versions)),
                "lagoon.policy-version-max": str(max(versions)),
                "lagoon.actor-id": actor_id,
                "lagoon.groups": str(groups if groups is not None else len({t.group_id for t in fresh})),
                "lagoon.trajectories": str(len(fresh)),
                "lagoon.run-id": fresh[0].run_id,
                **(extra_properties or {}),
            }
            try:
                self.table.append(to_arrow(fresh), snapshot_properties=properties)
            except CommitFailedException:
                conflicts += 1
                time.sleep(min(1.0, 0.01 * 2 ** min(conflicts, 7)) * (0.5 + random.random()))
                continue
            except Exception as error:
                from sqlalchemy.exc import OperationalError

                if isinstance(error, OperationalError):
                    conflicts += 1
                    time.sleep(0.05 * (0.5 + random.random()))
                    continue
                raise
            snapshot = self.table.current_snapshot()
            assert snapshot is not None
            return AppendResult(snapshot.snapshot_id, len(fresh), skipped, conflicts)

    # ----------------------------------------------------------------------------------------------
    # Reading

    def snapshots_after(self, after: int | None) -> list[SnapshotInfo]:
        """Append snapshots on the current lineage after snapshot `after` (None: all), oldest first."""
        from pyiceberg.table.snapshots import Operation, ancestors_between_ids

        self.refresh()
        current = self.table.current_snapshot()
        if current is None or current.snapshot_id == after:
            return []
        metadata = self.table.metadata
        if after is not None and metadata.snapshot_by_id(after) is None:
            # An expired position is still valid while it is the parent of a snapshot we can see.
            if not any(s.parent_snapshot_id == after for s in metadata.snapshots):
                raise LagoonError(f"snapshot {after} of {self.identifier} is no longer in the table's history "
                                  "(expired past the trainer's position?); cannot resume exactly")
        chain = list(ancestors_between_ids(after, current.snapshot_id, metadata))
        if after is not None and chain and chain[-1].parent_snapshot_id != after:
            raise LagoonError(f"snapshot {after} is not an ancestor of the current snapshot of {self.identifier}")
        out = []
        for snapshot in reversed(chain):
            summary = snapshot.summary
            if summary is None or summary.operation != Operation.APPEND:
                continue
            out.append(SnapshotInfo(snapshot.snapshot_id, snapshot.parent_snapshot_id, snapshot.sequence_number,
                                    snapshot.timestamp_ms, dict(summary.additional_properties)))
        return out

    def read_snapshot(self, snapshot: SnapshotInfo, row_filter: str | None = None) -> pa.Table:
        """The rows added by one append snapshot."""
        kwargs: dict[str, Any] = {}
        if row_filter:
            kwargs["row_filter"] = row_filter
        scan = self.table.incremental_append_scan(from_snapshot_id_exclusive=snapshot.parent_id,
                                                  to_snapshot_id_inclusive=snapshot.snapshot_id, **kwargs)
        return scan.to_arrow()

    def read_new(self, after: int | None, max_snapshots: int | None = None) -> list[tuple[SnapshotInfo, list[Trajectory]]]:
        """Trajectories of each append snapshot after `after`, oldest snapshot first."""
        snapshots = self.snapshots_after(after)
        if max_snapshots is not None:
            snapshots = snapshots[:max_snapshots]
        return [(s, from_arrow(self.read_snapshot(s))) for s in snapshots]

    def read_all(self) -> list[Trajectory]:
        self.refresh()
        if self.table.current_snapshot() is None:
            return []
        return from_arrow(self.table.scan().to_arrow())

    def group_ids(self, run_id: str | None = None, actor_id: str | None = None) -> set[str]:
        """Distinct group ids in the table (of `run_id` and written by `actor_id`, when given)."""
        from pyiceberg.expressions import AlwaysTrue, And, EqualTo

        self.refresh()
        if self.table.current_snapshot() is None:
            return set()
        condition = AlwaysTrue()
        if run_id is not None:
            condition = And(condition, EqualTo("run_id", run_id))
        if actor_id is not None:
            condition = And(condition, EqualTo("actor_id", actor_id))
        scan = self.table.scan(row_filter=condition, selected_fields=("group_id",))
        return set(scan.to_arrow().column("group_id").to_pylist())

    def count_groups(self, actor_id: str | None = None) -> int:
        """Distinct groups in the table (written by `actor_id`, if given)."""
        return len(self.group_ids(actor_id=actor_id))

    # ----------------------------------------------------------------------------------------------
    # Trainer progress and maintenance

    def publish_progress(self, progress: dict[str, Any]) -> None:
        """Store the trainer's progress as table properties ``lagoon.trainer.<key>`` (JSON values)."""
        from pyiceberg.exceptions import CommitFailedException

        values = {PROGRESS_PREFIX + key: json.dumps(value) for key, value in progress.items()}
        for attempt in range(50):
            self.refresh()
            try:
                with self.table.transaction() as transaction:
                    transaction.set_properties(values)
                return
            except CommitFailedException:
                time.sleep(min(1.0, 0.01 * 2 ** min(attempt, 7)) * (0.5 + random.random()))
        raise LagoonError(f"could not publish trainer progress to {self.identifier}: too many concurrent commits")

    def progress(self) -> dict[str, Any]:
        """The trainer's last published progress (empty before its first step)."""
        self.refresh()
        out = {}
        for key, value in self.table.metadata.properties.items():
            if key.startswith(PROGRESS_PREFIX):
                out[key[len(PROGRESS_PREFIX):]] = json.loads(value)
        return out

    def expire(self, keep_from: int | None, retain_last: int) -> int:
        """Expire snapshots that are ancestors of `keep_from` (a consumer's checkpointed position, kept
        itself) and not among the newest `retain_last`. Returns how many were expired."""
        from pyiceberg.exceptions import CommitFailedException
        from pyiceberg.table.snapshots import ancestors_of

        if keep_from is None:
            return 0
        for attempt in range(50):
            self.refresh()
            metadata = self.table.metadata
            start = metadata.snapshot_by_id(keep_from)
            if start is None:
                return 0
            newest = {s.snapshot_id for s in sorted(metadata.snapshots, key=lambda s: s.sequence_number)[-retain_last:]}
            old = [s.snapshot_id for s in ancestors_of(start, metadata)
                   if s.snapshot_id != keep_from and s.snapshot_id not in newest]
            if not old:
                return 0
            try:
                self.table.maintenance.expire_snapshots().by_ids(old).commit()
                return len(old)
            except CommitFailedException:
                time.sleep(min(1.0, 0.01 * 2 ** min(attempt, 7)) * (0.5 + random.random()))
        return 0

    def snapshot_count(self) -> int:
        self.refresh()
        return len(self.table.metadata.snapshots)
