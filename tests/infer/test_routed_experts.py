"""lagoon's engine reports the experts every sparse layer chose for each token it ran, and the policy version
of every generated token; the token-in/token-out client carries both into the trajectory table's contract
(one policy version per completion token, also when a weight update lands mid-turn)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import torch

from lagoon.agent.clients import CompletionsClient
from lagoon.agent.config import SamplingConfig
from lagoon.infer import Engine, SamplingParams
from lagoon.model.routing import RoutingCapture
from lagoon.rl.rollout import to_trajectory
from tests.infer.conftest import Server, tiny_model

pytestmark = pytest.mark.timeout(300)

PROMPT = [2, 50, 60, 70, 80, 90, 100, 110]


def test_the_engine_records_the_experts_of_every_token_it_ran():
    model = tiny_model(sliding_window=16)
    engine = Engine(model, max_batch=4)
    [done, plain] = engine.generate([PROMPT, PROMPT], [
        SamplingParams(max_tokens=10, temperature=1.0, seed=3, ignore_eos=True, return_routed_experts=True),
        SamplingParams(max_tokens=10, temperature=1.0, seed=3, ignore_eos=True)])
    assert plain.routed_experts is None and plain.token_ids == done.token_ids
    ran = PROMPT + done.token_ids[:-1]                       # the last sampled token never ran
    experts_TLk = done.routed_experts
    assert experts_TLk.shape == (len(ran), len(model.moe_blocks()), model.config.num_experts_per_tok)
    # A full forward over the same tokens routes the same way (prefill and cached decode steps alike).
    with torch.no_grad(), RoutingCapture(model) as capture:
        model(torch.tensor([ran]))
    reference_TLk = capture.experts_LNk.permute(1, 0, 2)
    same = (experts_TLk.sort(-1).values == reference_TLk.sort(-1).values).all(-1).float().mean()
    assert same >= 0.97, same     # near-ties may flip between the cached and the full computation


@pytest.fixture(scope="module")
def server(checkpoint):
    server = Server(checkpoint, "--max-batch", "4")
    yield server
    server.stop()


def test_a_weight_update_mid_turn_gives_per_token_versions_through_the_client(server, tmp_path):
    from lagoon.model import save_pretrained

    new = tmp_path / "v1"
    save_pretrained(tiny_model(sliding_window=16, seed=5), new)
    client = CompletionsClient(server.url + "/v1", stop_token_ids=[], return_routed_experts=True)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0)
    result = {}
    worker = threading.Thread(target=lambda: result.update(g=client.generate(PROMPT, sampling, 300, seed=1)))
    worker.start()
    deadline = time.monotonic() + 120
    while httpx.get(server.url + "/health", timeout=10).json()["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    reply = httpx.post(server.url + "/v1/weights/load", json={"path": str(new), "version": 1}, timeout=120)
    assert reply.status_code == 200, reply.text
    worker.join(timeout=240)
    generation = result["g"]
    versions = generation.policy_versions
    assert len(versions) == len(generation.token_ids) == 300
    assert versions[0] == 0 and versions[-1] == 1 and versions == sorted(versions)
    routed = generation.routed_experts.array()
    assert routed.dtype.name == "uint8" and routed.shape[0] == len(PROMPT) + 300 - 1

    # The table row keeps one version per completion token, and the turn's experts.
    record = {"prompt_ids": PROMPT, "prompt_len": len(PROMPT), "completion_ids": generation.token_ids,
              "logprobs": generation.logprobs, "policy_versions": versions, "sample": 0,
              "routed_experts": generation.routed_experts.to_record()}
    episode = type("Episode", (), {"turns": [record], "end": {"exit_reason": "submitted", "reward": 1.0},
                                   "task_id": "t"})()
    trajectory = to_trajectory(episode, trajectory_id="x", run_id="r", group_id="g", task_set="s", epoch=0,
                               attempt=0, actor_id="a", started_at=None)
    [sequence] = trajectory.sequences()
    assert sequence.policy_versions[len(PROMPT):] == versions
    assert trajectory.policy_version_min == 0 and trajectory.policy_version_max == 1
    assert sum(r is not None for r in sequence.routed_experts) == len(PROMPT) + 300 - 1


def test_a_server_that_reports_no_policy_version_is_an_error_not_minus_one():
    from lagoon.agent.clients import PolicyError, token_versions

    assert token_versions([3, 3, 4], 3, "s") == [3, 3, 4]
    assert token_versions([5], 3, "s") == [5, 5, 5]          # one version for the whole turn
    assert token_versions(["7", "7"], 2, "s") == [7, 7]      # vLLM's labels are strings
    for reported, message in ((None, "no policy version"), ([], "no policy version"),
                              (["default"], "not integers"), ([1, 2], "2 policy versions for 3 tokens")):
        with pytest.raises(PolicyError, match=message):
            token_versions(reported, 3, "http://server")
