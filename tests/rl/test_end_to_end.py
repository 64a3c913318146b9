"""The whole loop as users run it: `lagoon rl CONFIG --run-dir DIR` with a warm-up, a server, a trainer and
two actors — one of them killed with SIGKILL in the middle of its episodes.

Every group is kept (no zero-variance filter) and the task stream holds exactly the groups the trainer
needs, so the run can only finish if the killed actor is restarted and does the rest of its slots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lagoon.rl.config import TableConfig
from lagoon.rl.store import TrajectoryStore, catalog_properties
from lagoon.train.metrics import read_jsonl
from tests.conftest import ROOT

MINI = """
[model]
preset = "tiny"
hidden_size = 64
intermediate_size = 128
num_hidden_layers = 2
num_attention_heads = 2
num_key_value_heads = 1
head_dim = 32
attention_heads_by_type = { full_attention = 2, sliding_attention = 2 }
sliding_window = 128
num_experts = 4
num_experts_per_tok = 2
moe_intermediate_size = 64
shared_expert_intermediate_size = 64
vocab_size = 512

[agent.sampling]
temperature = 1.0
max_tokens_per_turn = 24

[agent.budgets]
max_steps = 2
max_context_tokens = 384

[rl]
total_steps = 8

[rl.tasks]
task_set = "arith-code:level=1"
num_tasks = 8                    # 2 epochs x 8 tasks = 16 groups = exactly 8 steps of 2 groups: the run
epochs = 2                       # can only finish if the killed actor comes back and does its slots
group_size = 3

[rl.sft]
steps = 12
batch_size = 8
num_examples = 64

[rl.actor]
num_actors = 2
concurrent_episodes = 3
filter_zero_variance = false

[rl.trainer]
groups_per_step = 2
max_staleness = 1
checkpoint_every = 2
poll_interval_s = 0.1
device = "cpu"
processes = 2                    # the SFT warm-up and the trainer on 2 ranks (torchrun, gloo): FSDP2 below

[rl.optim]
name = "adamw"
lr = 3e-4
adamw_lr = 3e-4
weight_decay = 0.0
adamw_betas = [0.9, 0.99]

[optim]
distributed = "ddp"              # distributed Muon's machinery (ZeRO-1 AdamW) whenever the layout is replicated

[parallel]
dp_replicate = 1
dp_shard = -1                    # parameters, gradients and optimizer state sharded over both trainer ranks

[rl.weights]
transfer = "shm"

[rl.table]
expire_every_steps = 2           # expire snapshots behind the trainer's checkpointed read position as it goes
retain_snapshots = 2

[rl.eval]
num_tasks = 6
"""


def _wait_for(predicate, timeout, process):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"lagoon rl exited early with {process.returncode}")
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def _appends(path):
    return [r for r in read_jsonl(path) if r.get("type") == "append"]


@pytest.mark.timeout(600)
def test_lagoon_rl_runs_end_to_end_and_survives_a_killed_actor(tmp_path):
    config = tmp_path / "mini.toml"
    config.write_text(MINI)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "lagoon", "rl", str(config), "--run-dir", str(run_dir)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Once actor-1 has committed an append, kill it in the middle of its next episodes.
        actor_log = run_dir / "actors" / "actor-1.jsonl"
        _wait_for(lambda: _appends(actor_log), 300, process)
        store = TrajectoryStore(TableConfig(), run_dir)
        pid = json.loads((run_dir / "pids.json").read_text())["actors"]["1"]
        os.kill(pid, signal.SIGKILL)
        committed = {t.trajectory_id for t in store.read_all()}
        # The live table answers plain pyiceberg queries while the run goes on.
        from pyiceberg.catalog import load_catalog

        live = load_catalog("lagoon", **catalog_properties(TableConfig(), run_dir)).load_table("lagoon.trajectories")
        assert live.scan(selected_fields=("trajectory_id",)).to_arrow().num_rows >= len(committed) > 0
        output, _ = process.communicate(timeout=280)
    finally:
        if process.poll() is None:   # the supervisor and everything it started (servers, trainer, actors)
            from lagoon.processes import kill_tree

            kill_tree(process.pid)
            process.wait()
    assert process.returncode == 0, output[-3000:]

    result = json.loads((run_dir / "result.json").read_text())
    assert result["version"] == 8
    assert 0 <= result["eval_before"]["reward_mean"] <= 1 and result["eval_after"]["episodes"] == 6
    assert result["eval_after"]["policy_versions"] == [8]

    # Nothing committed before the kill was lost, nothing was written twice, and actor-1 came back.
    final = TrajectoryStore(TableConfig(), run_dir).read_all()
    ids = [t.trajectory_id for t in final]
    assert committed <= set(ids) and len(ids) == len(set(ids)) == 16 * 3
    events = read_jsonl(run_dir / "events.jsonl")
    assert [(e["event"], e["actor"]) for e in events if e["event"] == "actor_restart"] == [("actor_restart", 1)]
    # Snapshots behind the trainer were expired while the run went on, and no read position was lost.
    assert any(e["event"] == "expire_snapshots" for e in events)
    assert TrajectoryStore(TableConfig(), run_dir).snapshot_count() < 16
    log = read_jsonl(run_dir / "actors" / "actor-1.jsonl")
    starts = [r for r in log if r["type"] == "start"]
    before_kill = sum(1 for t in final if t.actor_id == "actor-1" and t.trajectory_id in committed) // 3
    assert len(starts) == 2 and starts[1]["appended"] == before_kill >= 1
    assert len({t.group_id for t in final if t.actor_id == "actor-1"}) == 8

    # Every group the trainer consumed was trained on exactly once, within the staleness bound,
    # and admission control kept the trainer from having to drop anything.
    steps = read_jsonl(run_dir / "trainer" / "consumed.jsonl")
    trained = [g for s in steps for g in s["groups"]]
    assert [s["step"] for s in steps] == list(range(1, 9)) and len(trained) == len(set(trained)) == 16
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert all(m["staleness_max"] <= 1 for m in metrics)
    assert sum(m["dropped_stale"] for m in metrics) == 0
    assert all(m["weight_sync_s"] > 0 and m["mismatch_kl"] >= 0 for m in metrics)
    # The first step trains on data from the very weights it holds: the train-inference mismatch is ~0.
    assert metrics[0]["mismatch_kl_fresh"] < 1e-3
    assert (run_dir / "report.html").is_file()
    assert not list((run_dir / "checkpoints").glob(".step_*"))
    # The warm-up and the trainer ran on the engine, their weights and optimizer state sharded over 2 ranks.
    assert "fsdp (dp_replicate=1 × dp_shard=2)" in (run_dir / "sft.log").read_text()
    for checkpoint in (sorted((run_dir / "checkpoints").glob("step_*"))[-1], run_dir / "sft" / "checkpoints" / "step_00000012"):
        assert len(list((checkpoint / "dcp").glob("*.distcp"))) == 2, checkpoint
