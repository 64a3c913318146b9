"""Actors against a real `lagoon serve`: admission control holds them to the staleness budget, their rows carry
the token ids, sampler logprobs and policy versions of every turn, and they run as Ray actors too."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lagoon.config import load_config
from lagoon.rl.actor import Actor
from lagoon.rl.config import TableConfig
from lagoon.rl.servers import LocalServers
from lagoon.rl.store import TrajectoryStore


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A random tiny Laguna with the warm-up's tokenizer, served by one local `lagoon serve`."""
    from lagoon.model import LagunaForCausalLM, preset_config, save_pretrained
    from lagoon.rl.sft import build_tokenizer

    root = tmp_path_factory.mktemp("served")
    tokenizer = build_tokenizer(root / "tokenizer", seed=0, vocab_size=512)
    torch.manual_seed(0)
    model = LagunaForCausalLM(preset_config("tiny", num_hidden_layers=2, hidden_size=64, head_dim=16,
                                            vocab_size=512, intermediate_size=128, moe_intermediate_size=64,
                                            shared_expert_intermediate_size=64))
    checkpoint = save_pretrained(model, root / "init", tokenizer_dir=tokenizer)
    config = _config(checkpoint)
    servers = LocalServers(config, root / "servers")
    urls = servers.start()
    yield checkpoint, urls
    servers.stop()


def _config(checkpoint, **overrides):
    base = {"agent": {"sampling": {"temperature": 1.0, "max_tokens_per_turn": 8}},
            "rl": {"init_checkpoint": str(checkpoint), "tasks": {"task_set": "arith-code:level=1", "num_tasks": 16,
                                                                 "group_size": 2},
                   "actor": {"concurrent_episodes": 2, "filter_zero_variance": False},
                   "trainer": {"groups_per_step": 1, "max_staleness": 0}}}
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()], base=base)


def _groups(run_dir) -> int:
    return len(TrajectoryStore(TableConfig(), run_dir).group_ids())


@pytest.mark.timeout(180)
def test_admission_control_holds_an_actor_until_the_trainer_consumes(served, tmp_path):
    checkpoint, urls = served
    # η = 0, B = 1: one outstanding group at a time, i.e. generate → (trainer) → generate.
    actor = Actor(_config(checkpoint), tmp_path, 0, urls, say=lambda _: None)
    thread = threading.Thread(target=actor.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while _groups(tmp_path) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)                       # ample time for a second group, were it allowed
        assert _groups(tmp_path) == 1 and not actor.running
        # The trainer publishes version 1, having consumed that group: the next one may start.
        TrajectoryStore(TableConfig(), tmp_path).publish_progress(
            {"version": 1, "consumed_groups": {"actor-0": 1}, "total_steps": 10})
        while _groups(tmp_path) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)
        assert _groups(tmp_path) == 2
    finally:
        actor.stop.set()
        thread.join(60)
    rows = TrajectoryStore(TableConfig(), tmp_path).read_all()
    assert len(rows) == 4
    for row in rows:
        for turn in row.turns:
            assert len(turn.completion_ids) == len(turn.logprobs) > 0 and all(lp <= 0 for lp in turn.logprobs)
            assert turn.policy_versions and set(turn.policy_versions) == {0}
        assert row.turns[0].prompt_ids[0] == 2 and row.actor_id == "actor-0" and row.exit_reason
    # Both attempts of a group share the group and differ in their ids; slots are not repeated.
    assert len({r.group_id for r in rows}) == 2 and len({r.trajectory_id for r in rows}) == 4


@pytest.mark.timeout(240)
def test_actors_run_as_ray_actors(served, tmp_path):
    ray = pytest.importorskip("ray")
    from lagoon.configio import to_dict
    from lagoon.rl.ray_actors import RayActors

    checkpoint, urls = served
    config = _config(checkpoint, **{"rl.actor.num_actors": 2, "rl.actor.backend": '"ray"', "rl.trainer.max_staleness": 3})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        actors = RayActors(config, to_dict(config), tmp_path, urls)
        actors.start_all()
        deadline = time.monotonic() + 180
        while _groups(tmp_path) < 4 and time.monotonic() < deadline:
            assert actors.finished() == []
            time.sleep(0.5)
        actors.stop()
    finally:
        ray.shutdown()
    rows = TrajectoryStore(TableConfig(), tmp_path).read_all()
    assert {r.actor_id for r in rows} == {"actor-0", "actor-1"}
    assert len({r.trajectory_id for r in rows}) == len(rows) >= 8
