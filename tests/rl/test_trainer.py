"""The trainer process: exactly-once consumption across a kill -9, the staleness drop, a CISPO step that
moves the policy the right way, checkpoints and published weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lagoon.rl.config import TableConfig
from lagoon.rl.store import TrajectoryStore
from lagoon.rl.trainer import CONSUMED_LOG, Trainer
from lagoon.weights.publish import read_latest, store_root
from lagoon.train.metrics import read_jsonl
from tests.conftest import ROOT
from tests.rl.helpers import make_group, rl_config, tiny_checkpoint


def _write_groups(run_dir, tasks, version=0):
    store = TrajectoryStore(TableConfig(), run_dir)
    for task in tasks:
        store.append(make_group("run", 0, task, size=4, version=version), actor_id="actor-0")
    return store


def _config_file(directory, config):
    """The TOML form of `config`, for a trainer started as its own process."""
    from lagoon.configio import dumps_toml, to_dict

    path = directory / "rl.toml"
    path.write_text(dumps_toml(to_dict(config)))
    return path


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.timeout(480)
def test_a_killed_trainer_resumes_without_skipping_or_repeating(tmp_path):
    init = tiny_checkpoint(tmp_path / "init")
    run_dir = tmp_path / "run"
    _write_groups(run_dir, range(6))                         # three steps' worth
    config_path = _config_file(tmp_path, rl_config(init, **{"rl.total_steps": 5}))
    command = [sys.executable, "-m", "lagoon", "rl", "trainer", str(config_path), "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Three steps done, checkpoint at step 2, then it waits for more data: kill it there.
        # (A ceiling for a machine at load 20: start-up and model load alone can take a minute there.)
        _wait_for(lambda: len(read_jsonl(run_dir / "metrics.jsonl")) == 3 or process.poll() is not None, timeout=300)
        assert process.poll() is None, "the trainer exited early"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["step_00000002"]
    _write_groups(run_dir, range(6, 10))                     # two more steps' worth arrive meanwhile
    said = []
    trainer = Trainer(rl_config(init, **{"rl.total_steps": 5}), run_dir, say=said.append)
    assert trainer.run() == 5
    assert "trainer: resumed from step_00000002 at version 2, 2 groups pending" in said

    steps = read_jsonl(run_dir / CONSUMED_LOG)
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]
    trained = [g for s in steps for g in s["groups"]]
    written = {t.group_id for t in TrajectoryStore(TableConfig(), run_dir).read_all()}
    assert len(trained) == len(set(trained)) == 10 and set(trained) == written
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    latest = read_latest(run_dir / "weights")
    assert latest["version"] == 5
    progress = TrajectoryStore(TableConfig(), run_dir).progress()
    assert progress["version"] == 5 and progress["consumed_groups"] == {"actor-0": 10}


@pytest.mark.timeout(120)
def test_stale_groups_are_dropped_and_counted(tmp_path):
    init = tiny_checkpoint(tmp_path / "init")
    run_dir = tmp_path / "run"
    _write_groups(run_dir, range(4))
    config = rl_config(init, **{"rl.total_steps": 2, "rl.trainer.max_staleness": 1})
    trainer = Trainer(config, run_dir, say=lambda _: None)
    assert trainer.run() == 2
    # Two fresh groups (version 2) and two from version 0, two versions behind the trainer: over η = 1.
    store = _write_groups(run_dir, [10, 11], version=0)
    store.append(make_group("run", 0, 12, version=2) + make_group("run", 0, 13, version=2), actor_id="actor-0")
    config = rl_config(init, **{"rl.total_steps": 3, "rl.trainer.max_staleness": 1})
    trainer = Trainer(config, run_dir, say=lambda _: None)
    assert trainer.run() == 3
    last = read_jsonl(run_dir / "metrics.jsonl")[-1]
    assert last["step"] == 3 and last["dropped_stale"] == 8 and last["staleness_hist"] == {"0": 8}
    step = read_jsonl(run_dir / CONSUMED_LOG)[-1]
    assert len(step["dropped"]) == 2 and len(step["groups"]) == 2
    assert store.progress()["consumed_groups"] == {"actor-0": 8}


@pytest.mark.timeout(120)
def test_a_cispo_step_raises_rewarded_completions_and_lowers_the_rest(tmp_path):
    init = tiny_checkpoint(tmp_path / "init")
    run_dir = tmp_path / "run"
    store = _write_groups(run_dir, range(2))
    trainer = Trainer(rl_config(init, **{"rl.total_steps": 1, "rl.optim.lr": 3e-3, "rl.optim.adamw_lr": 3e-3}), run_dir,
                      say=lambda _: None)
    groups = [g for g in (store.read_all(),)][0]

    def completion_logprob(trajectory):
        from lagoon.rl.batching import pack, Sample

        (mb,) = pack([Sample(trajectory.sequences()[0], 0.0, "")], 4096)
        with torch.no_grad():
            from lagoon.rl.loss import sequence_logprobs

            logprobs = sequence_logprobs(trainer.model, mb.input_ids, mb.document_ids)
        return float(logprobs[mb.loss_mask].sum())

    before = {t.trajectory_id: completion_logprob(t) for t in groups}
    trainer.run()
    after = {t.trajectory_id: completion_logprob(t) for t in groups}
    for trajectory in groups:
        moved = after[trajectory.trajectory_id] - before[trajectory.trajectory_id]
        assert (moved > 0) == (trajectory.reward > 0.5), (trajectory.reward, moved)
    metrics = read_jsonl(run_dir / "metrics.jsonl")[-1]
    # The sampler logprobs in these rows are made up, so the IS weights clip; the counts must say so.
    assert 0 <= metrics["clip_high_frac"] <= 1 and metrics["loss_tokens"] == 8 * 6
    assert metrics["weight_bytes"] > 0 and metrics["weight_sync_gbps"] > 0
    published = store_root(trainer.rl.weights, run_dir) / "v_00000001"
    assert (published / "model.safetensors").is_file()
    assert json.loads((run_dir / "checkpoints" / "step_00000001" / "train_state" / "state.json").read_text())["step"] == 1


@pytest.mark.timeout(420)
def test_data_parallel_trainer_matches_the_single_process_one(tmp_path):
    """Two ranks on the engine — distributed Muon over replicas (ZeRO-1 AdamW), and FSDP2 — train as one does."""
    from lagoon.model.hf import read_weights

    init = tiny_checkpoint(tmp_path / "init")
    config = rl_config(init, **{"rl.total_steps": 2, "rl.trainer.row_tokens": 32})
    config_path = _config_file(tmp_path, config)
    weights = {}
    layouts = {"ddp": ["optim.distributed=\"ddp\""], "fsdp": ["parallel.dp_shard=-1", "parallel.dp_replicate=1"]}
    for name in ("single", *layouts):
        run_dir = tmp_path / name
        _write_groups(run_dir, range(4))
        if name == "single":
            Trainer(config, run_dir, say=lambda _: None).run()
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                       "-m", "lagoon", "rl", "trainer", str(config_path), "--run-dir", str(run_dir),
                       *[arg for override in layouts[name] for arg in ("--set", override)]]
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=200,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        weights[name] = read_weights(run_dir / "checkpoints" / "step_00000002")
        assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    for key, tensor in weights["single"].items():
        for name in layouts:
            torch.testing.assert_close(weights[name][key], tensor, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
