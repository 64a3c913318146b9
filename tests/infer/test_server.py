"""``lagoon serve`` over real sockets, driven by the official openai client (and raw HTTP for malformed input)."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
import torch

from lagoon.infer.chat import parse_reply, render_chat
from lagoon.infer.tokenizer import Tokenizer
from lagoon.model import from_pretrained
from lagoon.tokens import STOP_IDS
from tests.conftest import assert_one_line_error, run_lagoon
from tests.infer.conftest import Server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(checkpoint):
    server = Server(checkpoint, "--served-model-name", "laguna-tiny", "--max-batch", "8")
    yield server
    logs = server.stop()
    assert "Traceback" not in logs, logs


@pytest.fixture(scope="module")
def model(checkpoint):
    return from_pretrained(checkpoint, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return Tokenizer.from_dir(checkpoint)


def test_health_models_and_the_policy_version_header(server):
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["policy_version"] == 0 and health.headers["x-policy-version"] == "0"
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["laguna-tiny"]


def test_token_in_token_out_logprobs_equal_the_training_model(server, model):
    client = server.client()
    prompt = [2, 40, 41, 300, 301, 77, 500]
    response = client.completions.with_raw_response.create(
        model="laguna-tiny", prompt=prompt, max_tokens=24, temperature=1.0, seed=11, logprobs=2,
        extra_body={"return_token_ids": True, "ignore_eos": True})
    assert response.headers["x-policy-version"] == "0"
    body = json.loads(response.text)
    choice = body["choices"][0]
    assert body["policy_version"] == 0 and choice["policy_versions"] == [0]
    assert choice["prompt_token_ids"] == prompt and len(choice["token_ids"]) == 24
    generated = choice["token_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated])).logits[0, len(prompt) - 1 : -1].float()
    expected = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(generated)[:, None])[:, 0]
    served = torch.tensor(choice["logprobs"]["token_logprobs"], dtype=torch.float64)
    assert (served - expected.double()).abs().max().item() < 1e-5
    assert len(choice["logprobs"]["top_logprobs"]) == 24

    # The same seed gives the same sample; the stop tokens default to Laguna's.
    again = client.completions.create(model="laguna-tiny", prompt=prompt, max_tokens=24, temperature=1.0, seed=11,
                                      extra_body={"return_token_ids": True})
    ids = again.choices[0].model_extra["token_ids"]
    stopped = [i for i, t in enumerate(generated) if t in STOP_IDS]
    assert ids == generated[: stopped[0] + 1] if stopped else ids == generated


def test_text_prompts_round_trip_through_the_tokenizer(server, tokenizer):
    client = server.client()
    result = client.completions.create(model="laguna-tiny", prompt="def fib(n):", max_tokens=12, temperature=0,
                                       extra_body={"return_token_ids": True, "ignore_eos": True})
    choice = result.choices[0]
    assert choice.model_extra["prompt_token_ids"] == tokenizer.encode("def fib(n):")
    assert choice.text == tokenizer.decode(choice.model_extra["token_ids"])
    assert result.usage.completion_tokens == 12 and choice.finish_reason == "length"


@pytest.mark.parametrize("thinking", [False, True])
def test_chat_renders_laguna_format_and_splits_reasoning(server, tokenizer, thinking):
    client = server.client()
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi."}]
    extra = {"return_token_ids": True, "chat_template_kwargs": {"enable_thinking": thinking}}
    result = client.chat.completions.create(model="laguna-tiny", messages=messages, max_tokens=16, temperature=0,
                                            extra_body=extra)
    prompt_ids = result.model_extra["prompt_token_ids"]
    expected_prompt = render_chat(messages, add_generation_prompt=True, enable_thinking=thinking)
    assert tokenizer.decode(prompt_ids, skip_special_tokens=False) == expected_prompt
    assert prompt_ids == tokenizer.encode(expected_prompt, add_special_tokens=False)
    choice = result.choices[0]
    ids = [t for t in choice.model_extra["token_ids"] if t not in STOP_IDS]
    reply = parse_reply(tokenizer.decode(ids, skip_special_tokens=False), thinking, tools_enabled=False)
    assert choice.message.content == reply.content
    assert choice.message.model_extra.get("reasoning_content") == reply.reasoning_content
    if thinking:
        assert "reasoning_content" in choice.message.model_extra
    # reasoning_effort is the OpenAI way to ask for the same switch.
    effort = client.chat.completions.create(model="laguna-tiny", messages=messages, max_tokens=4, temperature=0,
                                            reasoning_effort="high" if thinking else "none",
                                            extra_body={"return_token_ids": True})
    assert effort.model_extra["prompt_token_ids"] == prompt_ids


def test_streaming_equals_the_whole_response(server):
    client = server.client()
    kwargs = dict(model="laguna-tiny", prompt=[2, 5, 6, 7, 8], max_tokens=20, temperature=0.8, seed=5,
                  extra_body={"return_token_ids": True, "ignore_eos": True})
    whole = client.completions.create(**kwargs).choices[0]
    text, ids, finish = "", [], None
    for chunk in client.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            text += choice.text
            ids += choice.model_extra.get("token_ids") or []
            finish = choice.finish_reason or finish
    assert (text, ids, finish) == (whole.text, whole.model_extra["token_ids"], "length")

    chat = dict(model="laguna-tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=12, temperature=0,
                extra_body={"chat_template_kwargs": {"enable_thinking": True}, "ignore_eos": True})
    message = client.chat.completions.create(**chat).choices[0].message
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **chat):
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            content += delta.content or ""
        else:
            assert chunk.usage.completion_tokens == 12
    assert reasoning == (message.model_extra["reasoning_content"] or "") and content == (message.content or "")


def test_concurrent_clients_get_the_same_answers_as_alone(server):
    client = server.client()
    prompts = [[2, 100 + i, 200 + i, 300 + i] for i in range(8)]

    def ask(prompt):
        return client.completions.create(model="laguna-tiny", prompt=prompt, max_tokens=16, temperature=0,
                                         extra_body={"return_token_ids": True, "ignore_eos": True}
                                         ).choices[0].model_extra["token_ids"]

    alone = [ask(p) for p in prompts[:3]]
    results: dict[int, list[int]] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, ask(prompts[i]))) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 8 and [results[i] for i in range(3)] == alone

    # n > 1 and a batch of prompts in one request.
    many = client.completions.create(model="laguna-tiny", prompt=prompts[:2], n=2, max_tokens=3, temperature=1.0,
                                     seed=3)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]


BAD_REQUESTS = [
    ("/v1/completions", "{not json", 400),
    ("/v1/completions", "[1, 2]", 400),
    ("/v1/completions", {"model": "laguna-tiny"}, 400),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400),
    ("/v1/completions", {"prompt": "x", "max_tokens": -3}, 400),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400),
    ("/v1/completions", {"prompt": [1, "a"]}, 400),
    ("/v1/completions", {"prompt": [10**9]}, 400),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10**7}, 400),
    ("/v1/completions", {"prompt": "x", "logprobs": 99}, 400),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404),
    ("/v1/completions", {"prompt": "x", "frequency_penalty": 0.5}, 400),
    ("/v1/chat/completions", {"messages": []}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "max"}, 400),
    ("/v1/weights/pause", {"mode": "sometimes"}, 400),
    ("/v1/weights/load", {"path": "/no/such/checkpoint"}, 400),
    ("/v1/weights/receive", {"master_addr": "127.0.0.1", "master_port": 1, "world_size": 2, "rank": 0}, 400),
    ("/v1/nothing-here", {}, 404),
]


@pytest.mark.parametrize("path,body,status", BAD_REQUESTS)
def test_malformed_requests_get_json_errors_and_the_server_keeps_serving(server, path, body, status):
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(server.url + path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["code"] == status
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_a_client_that_hangs_up_mid_stream_frees_its_row(server):
    body = {"prompt": [2, 7, 8, 9], "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break  # one chunk, then hang up
    for _ in range(600):
        health = httpx.get(server.url + "/health").json()
        if health["running"] == 0 and health["waiting"] == 0:
            break
        threading.Event().wait(0.05)
    assert health["running"] == 0 and health["waiting"] == 0


def test_the_openai_client_raises_its_own_errors(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="laguna-tiny", prompt="x", temperature=-1)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x")


def test_serve_rejects_a_bad_checkpoint_in_one_line(tmp_path):
    assert_one_line_error(run_lagoon("serve", str(tmp_path / "missing"), "--port", "0"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_lagoon("serve", str(tmp_path / "empty"), "--port", "0"), "config.json")


def test_serve_flags_override_the_serve_section(tmp_path):
    from lagoon.cli import build_parser
    from lagoon.errors import ConfigError
    from lagoon.infer.commands import serve_config

    config = tmp_path / "run.toml"
    config.write_text('[serve]\nmax_batch = 4\nport = 9001\nserved_model_name = "from-file"\n')
    args = build_parser().parse_args(["serve", "ckpt", "--config", str(config), "--port", "9100"])
    served = serve_config(args)
    assert (served.max_batch, served.port, served.served_model_name) == (4, 9100, "from-file")
    with pytest.raises(ConfigError, match="serve.max_batch"):
        serve_config(build_parser().parse_args(["serve", "ckpt", "--max-batch", "0"]))
