"""Live weight updates: load from the checkpoint store, a real gloo broadcast from a trainer process, digests."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import torch

from lagoon.errors import LagoonError
from lagoon.infer import Engine, SamplingParams, push_weights, weights_digest
from lagoon.model import from_pretrained, save_pretrained
from tests.infer.conftest import Server, tiny_model

pytestmark = pytest.mark.timeout(300)

PROMPT = [2, 50, 60, 70, 80, 90]
GREEDY = {"model": "tiny-laguna", "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "return_token_ids": True,
          "ignore_eos": True}


@pytest.fixture(scope="module")
def server(checkpoint):
    server = Server(checkpoint, "--max-batch", "4")
    yield server
    logs = server.stop()
    assert "Traceback" not in logs, logs


@pytest.fixture(scope="module")
def new_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt-v1") / "step_1"
    save_pretrained(tiny_model(sliding_window=16, seed=9), directory)
    return directory


def _greedy(model) -> list[int]:
    [done] = Engine(model).generate(PROMPT, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    return done.token_ids


def _complete(url: str, **overrides) -> dict:
    response = httpx.post(url + "/v1/completions", json={**GREEDY, **overrides}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-policy-version"] == str(body["policy_version"])
    return body


def test_a_weight_update_changes_outputs_and_version_without_dropping_requests(server, checkpoint, new_checkpoint):
    old_model = from_pretrained(checkpoint, dtype=torch.float32)
    new_model = from_pretrained(new_checkpoint, dtype=torch.float32)
    old_tokens, new_tokens = _greedy(old_model), _greedy(new_model)
    assert old_tokens != new_tokens
    assert httpx.get(server.url + "/v1/weights").json()["digest"] == weights_digest(old_model)

    results: list[dict] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            results.append(_complete(server.url, max_tokens=40))

    clients = [threading.Thread(target=client) for _ in range(3)]
    for thread in clients:
        thread.start()
    while len(results) < 2:
        time.sleep(0.01)
    loaded = httpx.post(server.url + "/v1/weights/load", json={"path": str(new_checkpoint), "version": 1}, timeout=120)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["policy_version"] == 1 and loaded.json()["update"]["num_bytes"] > 0
    deadline = time.monotonic() + 60
    while not any(r["choices"][0]["policy_versions"] == [1] for r in results) and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for thread in clients:
        thread.join(120)

    # Every request was answered; the ones that spanned the swap say so.
    versions = [tuple(r["choices"][0]["policy_versions"]) for r in results]
    assert (0,) in versions and (1,) in versions and set(versions) <= {(0,), (1,), (0, 1)}
    for body, version in zip(results, versions):
        tokens = body["choices"][0]["token_ids"]
        assert len(tokens) == 40
        if version == (0,):
            assert tokens[:12] == old_tokens
    after = _complete(server.url)
    assert after["policy_version"] == 1 and after["choices"][0]["token_ids"] == new_tokens
    weights = httpx.get(server.url + "/v1/weights").json()
    assert weights["digest"] == weights_digest(new_model) and weights["last_update"]["source"] == "load"


def test_pause_abort_returns_partial_results_and_resume_serves_queued_requests(server):
    results: list[dict] = []
    thread = threading.Thread(target=lambda: results.append(_complete(server.url, max_tokens=3000)))
    thread.start()
    while httpx.get(server.url + "/health").json()["running"] == 0:
        time.sleep(0.01)
    time.sleep(0.2)
    paused = httpx.post(server.url + "/v1/weights/pause", json={"mode": "abort"}, timeout=60)
    assert paused.status_code == 200 and paused.json()["paused"]
    thread.join(60)
    choice = results[0]["choices"][0]
    assert choice["finish_reason"] == "abort" and 0 < len(choice["token_ids"]) < 3000

    queued: list[dict] = []
    waiter = threading.Thread(target=lambda: queued.append(_complete(server.url, max_tokens=2)))
    waiter.start()
    time.sleep(0.3)
    assert not queued  # held while paused, not refused
    assert httpx.post(server.url + "/v1/weights/resume").status_code == 200
    waiter.join(60)
    assert queued[0]["choices"][0]["finish_reason"] == "length"


def test_gloo_broadcast_from_a_trainer_process(server):
    trained = tiny_model(sliding_window=16, seed=21)
    stats = push_weights(trained, [server.url], version=5, bucket_bytes=1 << 20)
    assert stats.num_buckets > 1 and stats.num_bytes == sum(t.numel() * 4 for t in trained.state_dict().values())
    weights = httpx.get(server.url + "/v1/weights").json()
    assert weights["policy_version"] == 5 and weights["digest"] == weights_digest(trained)
    assert weights["last_update"]["source"] == "broadcast" and weights["last_update"]["gb_per_s"] > 0
    body = _complete(server.url)
    assert body["policy_version"] == 5 and body["choices"][0]["token_ids"] == _greedy(trained)
    # Many small buckets between lone tensors exercise the double-buffered staging on both sides.
    again = tiny_model(sliding_window=16, seed=22)
    push_weights(again, [server.url], version=6, bucket_bytes=200_000)
    assert httpx.get(server.url + "/v1/weights").json()["digest"] == weights_digest(again)


def test_mismatched_weights_are_refused_and_nothing_changes(server, tmp_path):
    before = httpx.get(server.url + "/v1/weights").json()
    wider = tiny_model(sliding_window=16, hidden_size=96)
    with pytest.raises(LagoonError, match="shape"):
        push_weights(wider, [server.url], version=99, timeout_s=60)
    save_pretrained(wider, tmp_path / "wider")
    refused = httpx.post(server.url + "/v1/weights/load", json={"path": str(tmp_path / "wider"), "version": 99})
    assert refused.status_code == 400 and "hidden_size" in refused.json()["error"]["message"]
    # A checkpoint whose weights no longer match its manifest (a torn copy) is refused too.
    from lagoon.train.checkpoint import write_manifest

    torn = save_pretrained(tiny_model(sliding_window=16, seed=4), tmp_path / "torn")
    write_manifest(torn, step=1)
    with (torn / "model.safetensors").open("r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    refused = httpx.post(server.url + "/v1/weights/load", json={"path": str(torn), "version": 99})
    assert refused.status_code == 400 and "SHA-256" in refused.json()["error"]["message"]
    after = httpx.get(server.url + "/v1/weights").json()
    assert (after["digest"], after["policy_version"], after["paused"]) == (before["digest"], before["policy_version"],
                                                                          False)
    assert _complete(server.url)["policy_version"] == before["policy_version"]


def test_a_stream_longer_than_its_announced_layout_fails_the_update_on_both_sides(server):
    from lagoon.weights.tensors import layout_of, ordered_tensors

    trained = tiny_model(sliding_window=16, seed=23)
    stream = [*ordered_tensors(trained), ("zz.extra", torch.zeros(4))]   # the layout fits the model, the stream not
    with pytest.raises(LagoonError, match="more tensors than the announced layout.*zz.extra"):
        push_weights(iter(stream), [server.url], version=7, timeout_s=60, layout=layout_of(trained))
    # The server heard of the failure in the closing vote (nothing left waiting) and serves again once whole weights
    # arrive.
    push_weights(trained, [server.url], version=8, timeout_s=60)
    weights = httpx.get(server.url + "/v1/weights").json()
    assert weights["policy_version"] == 8 and weights["digest"] == weights_digest(trained)


def test_digest_is_dtype_aware_and_order_independent():
    import copy

    model = tiny_model()
    state = {name: tensor.clone() for name, tensor in reversed(list(model.state_dict().items()))}
    assert weights_digest(state) == weights_digest(model)
    assert weights_digest(model, dtype=torch.bfloat16) == weights_digest(copy.deepcopy(model).to(torch.bfloat16))
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-3
    assert weights_digest(model) != weights_digest(state)
