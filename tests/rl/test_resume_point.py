"""Servers start from the weights the trainer resumes from, and the trainer never trains on tokens of a version it
has not published — whatever the weight store holds (a killed run leaves its /dev/shm store behind, and a new
run in a directory of the same path would otherwise start its servers from it)."""

from __future__ import annotations

from lagoon.rl.consumer import ConsumerState, Group
from lagoon.rl.servers import current_weights
from lagoon.rl.staleness import StalenessFilter
from lagoon.weights.publish import store_root, version_dir_name
from tests.rl.helpers import make_group, rl_config


def _version_dir(root, version):
    directory = root / version_dir_name(version)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    return directory


def test_servers_start_at_the_trainers_checkpoint_never_at_the_stores_newest_version(tmp_path):
    init, run_dir = tmp_path / "init", tmp_path / "run"
    init.mkdir()
    config = rl_config(init, **{"rl.weights.transfer": "shm"})
    root = store_root(config.rl.weights, run_dir)
    try:
        _version_dir(root, 3)                        # a store left behind by a killed run at the same path
        (root / "LATEST.json").write_text('{"version": 3, "path": "%s"}' % (root / version_dir_name(3)))
        assert current_weights(config, run_dir) == (init, 0)       # no trainer checkpoint: the initial policy

        checkpoint = run_dir / "checkpoints" / "step_00000002"
        checkpoint.mkdir(parents=True)
        assert current_weights(config, run_dir) == (checkpoint, 2)   # lagoon serve reads the checkpoint itself
        vllm = rl_config(init, **{"rl.weights.transfer": "shm", "rl.servers.engine": "vllm"})
        assert current_weights(vllm, run_dir) == (init, 0)         # vLLM reads Hugging Face directories only
        stored = _version_dir(root, 2)
        assert current_weights(config, run_dir) == current_weights(vllm, run_dir) == (stored, 2)
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_groups_from_a_version_newer_than_the_trainers_are_dropped():
    state = ConsumerState()
    for task, version in enumerate((3, 0, 1, 0)):
        state.pending.append(Group(f"g{task}", "actor-0", make_group("run", 0, task, size=2, version=version), 1))
    batch = state.take(0, 2, StalenessFilter(max_staleness=4))
    assert [g.group_id for g in batch.groups] == ["g1", "g3"]
    assert [g.group_id for g in batch.dropped] == ["g0", "g2"] and batch.ahead == 4
    assert state.consumed_groups == {"actor-0": 4} and state.dropped_groups == 2
