"""The Iceberg trajectory table: schema, idempotent batch appends, concurrent writers, incremental scans,
snapshot properties, trainer progress and snapshot expiry."""

from __future__ import annotations

import multiprocessing

import pytest

from lagoon.rl.config import TableConfig
from lagoon.rl.store import TrajectoryStore, catalog_properties
from lagoon.rl.trajectory import Trajectory, Turn
from tests.rl.helpers import make_group, make_trajectory


def test_rows_round_trip_and_rebuild_one_sequence(tmp_path):
    store = TrajectoryStore(TableConfig(), tmp_path)
    original = make_trajectory("run", 0, 3, 1, reward=1.0, version=4)
    result = store.append([original], actor_id="actor-0")
    assert result.written == 1 and result.snapshot_id is not None
    (back,) = store.read_all()
    assert back.turns[1].prompt_ids == original.turns[1].prompt_ids and back.turns[1].policy_versions == [4, 4, 4]
    assert back.turns[0].logprobs == pytest.approx(original.turns[0].logprobs)
    assert back.grader == original.grader and back.timings == original.timings
    (sequence,) = back.sequences()
    # Both turns belong to sample 0, so the episode is one sequence whose trained tokens are exactly
    # the two completions.
    first, second = original.turns
    assert sequence.token_ids == first.prompt_ids + first.completion_ids + second.prompt_ids + second.completion_ids
    trained = [t for t, m in zip(sequence.token_ids, sequence.loss_mask) if m]
    assert trained == original.turns[0].completion_ids + original.turns[1].completion_ids
    assert set(v for v, m in zip(sequence.policy_versions, sequence.loss_mask) if m) == {4}


def test_a_rerendered_context_starts_a_separate_sequence():
    trajectory = Trajectory("id", "run", "g", "s", "t", 0, 0, "a", turns=[
        Turn([1, 2], [3], [-0.1], [0]), Turn([5], [6, 7], [-0.2, -0.3], [0, 1]),
        Turn([1, 9], [4], [-0.2], [1], sample=1)], reward=0.0)
    first, second = trajectory.sequences()
    assert first.token_ids == [1, 2, 3, 5, 6, 7] and second.token_ids == [1, 9, 4]
    assert first.policy_versions == [-1, -1, 0, -1, 0, 1]          # a weight update landed mid-turn
    assert trajectory.policy_version_min == 0 and trajectory.policy_version_max == 1


def test_a_retried_append_never_duplicates(tmp_path):
    store = TrajectoryStore(TableConfig(), tmp_path)
    batch = make_group("run", 0, 1) + make_group("run", 0, 2)
    assert store.append(batch, actor_id="actor-0").written == 8
    retry = store.append(batch, actor_id="actor-0")
    assert retry.written == 0 and retry.snapshot_id is None and len(retry.skipped) == 8
    # A second writer (a restarted actor) re-doing part of the same slots adds only the new ones.
    other = TrajectoryStore(TableConfig(), tmp_path)
    partial = other.append(make_group("run", 0, 2) + make_group("run", 0, 3), actor_id="actor-1")
    assert partial.written == 4 and len(partial.skipped) == 4
    ids = [t.trajectory_id for t in store.read_all()]
    assert len(ids) == len(set(ids)) == 12


def test_snapshot_properties_and_incremental_reads(tmp_path):
    store = TrajectoryStore(TableConfig(), tmp_path)
    store.append(make_group("run", 0, 1, version=3), actor_id="actor-0")
    store.append(make_group("run", 0, 2, version=5, actor_id="actor-1")
                 + make_group("run", 0, 3, version=6, actor_id="actor-1"), actor_id="actor-1")
    (first, firsts), (second, seconds) = store.read_new(None)
    assert first.properties["lagoon.policy-version-min"] == "3"
    assert second.properties["lagoon.policy-version-min"] == "5"
    assert second.properties["lagoon.policy-version-max"] == "6"
    assert second.properties["lagoon.actor-id"] == "actor-1" and second.groups == 2
    assert [t.task_id for t in firsts] == ["arith-code/1"] * 4
    assert store.read_new(second.snapshot_id) == []
    store.append(make_group("run", 0, 4), actor_id="actor-0")
    ((third, thirds),) = store.read_new(second.snapshot_id)
    assert {t.task_id for t in thirds} == {"arith-code/4"}
    assert store.count_groups("actor-0") == 2 and store.count_groups("actor-1") == 2 and store.count_groups() == 4


def _write(run_dir: str, writer: int, batches: int) -> None:
    store = TrajectoryStore(TableConfig(), run_dir)
    for batch in range(batches):
        store.append(make_group("run", 0, writer * 100 + batch, size=2, actor_id=f"actor-{writer}"),
                     actor_id=f"actor-{writer}")


@pytest.mark.timeout(120)
def test_concurrent_appends_from_many_processes_all_land(tmp_path):
    TrajectoryStore(TableConfig(), tmp_path)       # the orchestrator creates the table before actors start
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write, args=(str(tmp_path), w, 4)) for w in range(3)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(100)
        assert process.exitcode == 0
    store = TrajectoryStore(TableConfig(), tmp_path)
    rows = store.read_all()
    assert len(rows) == 3 * 4 * 2 and len({t.trajectory_id for t in rows}) == 24
    assert len(store.snapshots_after(None)) == 12


def test_progress_properties_and_expiry_keep_the_consumer_position_valid(tmp_path):
    store = TrajectoryStore(TableConfig(), tmp_path)
    for task in range(6):
        store.append(make_group("run", 0, task, size=2), actor_id="actor-0")
    snapshots = store.snapshots_after(None)
    position = snapshots[3].snapshot_id                 # the trainer has consumed four appends
    store.publish_progress({"version": 7, "consumed_snapshot": position, "consumed_groups": {"actor-0": 4}})
    assert store.progress()["consumed_groups"] == {"actor-0": 4}
    expired = store.expire(position, retain_last=1)
    assert expired == 3 and store.snapshot_count() == 3
    # Reading on from the consumer's position still returns exactly the two unread appends,
    # and a full scan still sees every row (expiry removes metadata, never data).
    assert [s.snapshot_id for s, _ in store.read_new(position)] == [s.snapshot_id for s in snapshots[4:]]
    assert len(store.read_all()) == 12
    # The position itself is never expired (pyiceberg detaches the children of an expired snapshot,
    # after which nobody could read on from it).
    assert store.expire(position, retain_last=1) == 0
    assert store.table.metadata.snapshot_by_id(position) is not None


def test_anyone_can_query_the_live_table_with_plain_pyiceberg(tmp_path):
    from pyiceberg.catalog import load_catalog

    store = TrajectoryStore(TableConfig(), tmp_path)
    store.append(make_group("run", 0, 1), actor_id="actor-0")
    catalog = load_catalog("lagoon", **catalog_properties(TableConfig(), tmp_path))
    table = catalog.load_table("lagoon.trajectories")
    rewards = table.scan(row_filter="reward > 0.5", selected_fields=("task_id", "reward")).to_arrow()
    assert rewards.num_rows == 2 and set(rewards.column("reward").to_pylist()) == {1.0}


def test_rest_catalog_properties_come_from_the_config(tmp_path):
    config = TableConfig(catalog="rest", uri="http://catalog:8181", warehouse="s3://bucket/wh",
                         properties={"token": "t", "s3.endpoint": "http://minio:9000"})
    properties = catalog_properties(config, tmp_path)
    assert properties == {"type": "rest", "uri": "http://catalog:8181", "warehouse": "s3://bucket/wh",
                          "token": "t", "s3.endpoint": "http://minio:9000"}
