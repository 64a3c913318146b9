"""Infrastructure failures go loud: an actor whose server is gone retries, counts the failures apart from the
model's and stops with one line (exit 3); the trainer then stops too instead of waiting forever; an append that
fails is retried and never dropped."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from lagoon.rl.actor import Actor
from lagoon.rl.config import TableConfig
from lagoon.rl.health import EXIT_INFRASTRUCTURE, InfrastructureError, read_health
from lagoon.rl.store import TrajectoryStore
from lagoon.train.metrics import read_jsonl
from tests.conftest import assert_one_line_error, run_lagoon
from tests.rl.helpers import make_group, rl_config, tiny_checkpoint

THRESHOLD = 6


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    """A tiny checkpoint with a real tokenizer (nothing serves it: the point is the absent server)."""
    from lagoon.model import LagunaForCausalLM, preset_config, save_pretrained
    from lagoon.rl.sft import build_tokenizer

    root = tmp_path_factory.mktemp("init")
    tokenizer = build_tokenizer(root / "tokenizer", seed=0, vocab_size=512)
    model = LagunaForCausalLM(preset_config("tiny", num_hidden_layers=1, hidden_size=64, head_dim=16, vocab_size=512,
                                            intermediate_size=128, moe_intermediate_size=64,
                                            shared_expert_intermediate_size=64))
    return save_pretrained(model, root / "init", tokenizer_dir=tokenizer)


def _dead_url() -> str:
    with socket.socket() as sock:            # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _config(init, **overrides):
    return rl_config(init, **{"rl.tasks.task_set": "arith-code:level=1", "rl.tasks.group_size": 2,
                              "rl.actor.concurrent_episodes": 2, "rl.actor.infra_retries": 1,
                              "rl.actor.max_consecutive_infra_failures": THRESHOLD, "rl.actor.request_timeout_s": 5.0,
                              **overrides})


def _config_file(directory, config):
    from lagoon.configio import dumps_toml, to_dict

    path = directory / "rl.toml"
    path.write_text(dumps_toml(to_dict(config)))
    return path


@pytest.mark.timeout(300)
def test_a_dead_server_stops_the_actor_and_then_the_trainer_with_one_line(init, tmp_path):
    run_dir = tmp_path / "run"
    config_path = _config_file(tmp_path, _config(init))
    actor = run_lagoon("rl", "actor", str(config_path), "--run-dir", str(run_dir), "--server", _dead_url(), timeout=240)
    assert_one_line_error(actor, "actor-0:", "infrastructure failures in a row", "server", code=EXIT_INFRASTRUCTURE)

    (health,) = read_health(run_dir).values()
    assert health["infra"]["server"] >= THRESHOLD and health["retries"] >= 1 and health["stopped"]
    assert health["episodes"] == 0 and sum(health["infra"].values()) == health["infra"]["server"]
    log = read_jsonl(run_dir / "actors" / "actor-0.jsonl")
    assert [r for r in log if r["type"] == "infra_stop"]
    groups = [r for r in log if r["type"] == "group"]
    # Groups lost to the server are left undone (a restart runs their slots again), not filtered away.
    assert groups and all(r["kept"] is None and r["reason"] in ("infrastructure", "stopped") for r in groups), groups

    # The trainer, with no data coming and its only actor stopped on infrastructure, stops with one line.
    trainer = run_lagoon("rl", "trainer", str(config_path), "--run-dir", str(run_dir), timeout=240)
    assert_one_line_error(trainer, "trainer stopped waiting for data", "every actor reports only infrastructure",
                          code=EXIT_INFRASTRUCTURE)


def _data_dir(run_dir):
    (data,) = (run_dir / "trajectories" / "warehouse").glob("*/trajectories")
    return data / "data"


@pytest.mark.timeout(180)
def test_a_failed_append_is_retried_never_dropped(init, tmp_path):
    run_dir = tmp_path / "run"
    actor = Actor(_config(init, **{"rl.actor.max_consecutive_infra_failures": 3}), run_dir, 0, [_dead_url()],
                  say=lambda _: None)
    group = make_group(actor.run_id, 0, 1, size=2)
    actor.buffer.append(group)
    actor._pending_records.append({"type": "group", "slot": 0, "group_id": group[0].group_id})

    # Break the table: its data directory becomes a file, so writing a data file fails.
    data = _data_dir(run_dir)
    shutil.rmtree(data, ignore_errors=True)
    data.write_text("not a directory")
    actor._flush(force=False)
    assert len(actor.buffer) == 1                                     # kept for the retry
    assert read_health(run_dir)["actor-0"]["infra"]["append"] == 1
    assert [r for r in read_jsonl(actor.log_path) if r["type"] == "append_failed"]

    # Mended: the retry (after its backoff) appends the same group.
    data.unlink()
    actor._append_after = 0.0
    actor._flush(force=False)
    assert actor.buffer == [] and len(TrajectoryStore(TableConfig(), run_dir).read_all()) == 2
    assert read_health(run_dir)["actor-0"]["consecutive"] == 0

    # Broken for good while stopping: retried up to the threshold, then one line naming what was not appended.
    actor.buffer.append(make_group(actor.run_id, 0, 2, size=2))
    saved = data.with_name("data.saved")
    data.rename(saved)
    data.write_text("not a directory")
    with pytest.raises(InfrastructureError, match=r"1 finished group\(s\) could not be appended"):
        actor._flush(force=True)
    health = read_health(run_dir)["actor-0"]
    assert health["infra"]["append"] == 4 and health["stopped"]
    data.unlink()
    saved.rename(data)
    assert len(actor.buffer) == 1 and len(TrajectoryStore(TableConfig(), run_dir).read_all()) == 2
    assert json.loads((run_dir / "actors" / "actor-0.health.json").read_text())["consecutive"] == 3
