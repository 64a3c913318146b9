"""The engine: KV cache = recomputation, exact logprobs, seeded determinism, stops, continuous batching, pauses."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lagoon.infer import Engine, SamplingParams
from lagoon.infer.cache import KVCache
from lagoon.infer.reference import generate_without_cache
from lagoon.infer.tokenizer import Tokenizer
from tests.infer.conftest import VOCAB, tiny_model

pytestmark = pytest.mark.timeout(300)

WINDOW = 8


@pytest.fixture(scope="module")
def model():
    return tiny_model(sliding_window=WINDOW, seed=1)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return Tokenizer.from_dir(tokenizer_dir)


def _prompts(count: int, lengths=(3, 11, 27, 6)) -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return [[2] + torch.randint(32, VOCAB, (lengths[i % len(lengths)] - 1,), generator=generator).tolist()
            for i in range(count)]


def test_greedy_with_the_kv_cache_equals_recomputation_beyond_the_sliding_window(model):
    prompts = _prompts(4)
    params = SamplingParams(max_tokens=3 * WINDOW + 5, temperature=0.0, ignore_eos=True)
    engine = Engine(model, max_batch=3)  # four prompts, three rows: one joins as another leaves
    cached = engine.generate(prompts, params)
    for prompt, done in zip(prompts, cached):
        reference = generate_without_cache(model, prompt, params)
        assert done.token_ids == reference.token_ids
        assert max(abs(a - b) for a, b in zip(done.logprobs, reference.logprobs)) < 1e-4
        assert done.finish_reason == "length" and len(prompt) + len(done.token_ids) > 3 * WINDOW


def test_sliding_layers_keep_only_their_window():
    model = tiny_model(sliding_window=WINDOW)
    cache = KVCache(model.config, max_rows=2, max_len=512, dtype=torch.float32, device="cpu", initial_len=16)
    cache.ensure_capacity(300)
    for layer, kind in enumerate(model.config.layer_types):
        expected = WINDOW if kind == "sliding_attention" else 512
        assert cache.slots(layer) == expected, (layer, kind)


def _model_logprobs(model, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """The training model's log-softmax [len(generated), V] at the positions that predicted `generated`."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated])).logits[0].float()
    return torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)


def _filtered(logprobs_V: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The sampling distribution written the slow, obvious way: temperature, top-k, then top-p, renormalised."""
    logits = logprobs_V / temperature
    order = logits.argsort(descending=True).tolist()
    keep = order[:top_k] if top_k > 0 else order
    probs = torch.softmax(logits[keep], dim=-1).tolist()
    kept, mass = [], 0.0
    for token, prob in zip(keep, probs):
        if mass >= top_p:
            break
        kept.append(token)
        mass += prob
    masked = torch.full_like(logits, float("-inf"))
    masked[kept] = logits[kept]
    return torch.log_softmax(masked, dim=-1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 20, 0.9), (1.3, 0, 0.5)])
def test_sampling_logprobs_are_exact_under_the_sampled_distribution(model, temperature, top_k, top_p):
    prompt = _prompts(1, lengths=(12,))[0]
    params = SamplingParams(max_tokens=20, temperature=temperature, top_k=top_k, top_p=top_p, seed=3,
                            ignore_eos=True, logprobs=3)
    [done] = Engine(model).generate(prompt, params)
    raw = _model_logprobs(model, prompt, done.token_ids)
    for step, token in enumerate(done.token_ids):
        expected = _filtered(raw[step], temperature, top_k, top_p)
        assert expected[token] > float("-inf"), "sampled a token outside the filtered support"
        assert done.logprobs[step] == pytest.approx(expected[token].item(), abs=2e-5)
        top_ids = [i for i, _ in done.top_logprobs[step]]
        assert top_ids[0] == int(expected.argmax())
    if (temperature, top_k, top_p) == (1.0, 0, 1.0):  # plain sampling: exactly the model's log-softmax
        model_logprobs = raw.gather(-1, torch.tensor(done.token_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(done.logprobs), model_logprobs, atol=1e-5)

    raw_mode = SamplingParams(**{**params.__dict__, "logprobs_mode": "raw"})
    [again] = Engine(model).generate(prompt, raw_mode)
    assert again.token_ids == done.token_ids  # same seed, same draws; only the reported distribution differs
    expected_raw = raw.gather(-1, torch.tensor(done.token_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(again.logprobs), expected_raw, atol=1e-5)


def test_exponential_race_samples_the_distribution():
    from lagoon.infer.sampling import sample

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    params = SamplingParams(temperature=0.8, top_k=4, seed=0)
    generator = params.make_generator(torch.device("cpu"))
    draws = 20000  # one row per draw, all from the same generator
    tokens = sample(logits.expand(draws, 5), [params] * draws, [generator] * draws).tokens_B
    frequencies = torch.bincount(tokens, minlength=5) / draws
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.0, float("-inf"), 0.5]) / 0.8, dim=-1)
    assert frequencies[3] == 0  # outside the top-k
    assert 0.5 * (frequencies - expected).abs().sum() < 0.015


def test_a_seeded_request_is_the_same_alone_and_batched(model):
    prompts = _prompts(5)
    seeded = SamplingParams(max_tokens=25, temperature=0.9, top_p=0.95, seed=1234, ignore_eos=True)
    [alone] = Engine(model).generate(prompts[0], seeded)
    others = [SamplingParams(max_tokens=n, temperature=1.0, ignore_eos=True) for n in (5, 30, 12, 18)]
    batched = Engine(model, max_batch=3).generate(prompts[1:3] + [prompts[0]] + prompts[3:],
                                                  others[:2] + [seeded] + others[2:])
    assert batched[2].token_ids == alone.token_ids
    assert max(abs(a - b) for a, b in zip(batched[2].logprobs, alone.logprobs)) < 1e-4
    reference = generate_without_cache(model, prompts[0], seeded)
    assert reference.token_ids == alone.token_ids


def test_stop_token_ids_stop_strings_and_max_tokens(model, tokenizer):
    engine = Engine(model, tokenizer)
    prompt = "def parse(text):"
    [free] = engine.generate(prompt, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))
    assert free.finish_reason == "length" and len(free.token_ids) == 30

    stop_id = free.token_ids[10]
    first = free.token_ids.index(stop_id)
    [by_id] = engine.generate(prompt, SamplingParams(max_tokens=30, temperature=0.0, stop_token_ids=[stop_id]))
    assert by_id.finish_reason == "stop" and by_id.stop_reason == stop_id
    assert by_id.token_ids == free.token_ids[: first + 1]  # the stop token is kept in the ids

    text = free.text
    needle = next(text[i : i + 3] for i in range(len(text) // 3, len(text)) if text[i : i + 3].strip()
                  and "\ufffd" not in text[i : i + 3])
    cut = text.index(needle)
    [by_string] = engine.generate(prompt, SamplingParams(max_tokens=30, temperature=0.0, stop=[needle], ignore_eos=True))
    assert by_string.finish_reason == "stop" and by_string.stop_reason == needle
    assert by_string.text == text[:cut]
    assert by_string.token_ids == free.token_ids[: len(by_string.token_ids)]
    [kept] = engine.generate(prompt, SamplingParams(max_tokens=30, temperature=0.0, stop=[needle], ignore_eos=True,
                                                    include_stop_str_in_output=True))
    assert kept.text == text[: cut + len(needle)]


def test_requests_join_a_running_batch_between_decode_steps(model):
    engine = Engine(model, max_batch=4)
    prompts = _prompts(3)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    alone = [generate_without_cache(model, p, params).token_ids for p in prompts]
    engine.start()
    try:
        first = engine.submit(prompts[0], params)
        while len(first.output_ids) < 5:
            time.sleep(0.001)
        later = [engine.submit(p, params) for p in prompts[1:]]
        for request in [first, *later]:
            assert request.done.wait(60)
        assert len(first.output_ids) == 40
        # The late requests were decoded while the first was still running.
        assert engine.steps < 40 + 40
    finally:
        engine.stop()
    assert [r.completion().token_ids for r in [first, *later]] == alone


def test_pause_keep_continues_under_the_new_weights(model):
    new_model = tiny_model(sliding_window=WINDOW, seed=2)
    engine = Engine(tiny_model(sliding_window=WINDOW, seed=1))
    prompt = _prompts(1, lengths=(9,))[0]
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    engine.start()
    try:
        request = engine.submit(prompt, params)
        while len(request.output_ids) < 6:
            time.sleep(0.001)
        engine.pause("keep")
        split = len(request.output_ids)
        queued = engine.submit(prompt, params)  # arrives while paused: waits, is not dropped
        engine.load_state_dict(new_model.state_dict(), version=7)
        assert engine.policy_version == 7 and not queued.finished
        engine.resume()
        assert request.done.wait(60) and queued.done.wait(60)
    finally:
        engine.stop()
    done = request.completion()
    old = generate_without_cache(model, prompt, params)
    assert done.token_ids[:split] == old.token_ids[:split]
    continuation = generate_without_cache(new_model, prompt + done.token_ids[:split],
                                          SamplingParams(max_tokens=30 - split, temperature=0.0, ignore_eos=True))
    assert done.token_ids[split:] == continuation.token_ids
    assert done.policy_versions == [0, 7]
    assert done.token_policy_versions == [0] * split + [7] * (30 - split)
    assert queued.completion().token_ids == generate_without_cache(new_model, prompt, params).token_ids


def test_pause_abort_ends_requests_with_their_tokens_so_far(model):
    engine = Engine(model, max_batch=1)
    prompts = _prompts(2)
    params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
    engine.start()
    try:
        running = engine.submit(prompts[0], params)
        waiting = engine.submit(prompts[1], params)  # no free row: still queued
        while len(running.output_ids) < 3:
            time.sleep(0.001)
        engine.pause("abort")
        assert running.done.is_set() and waiting.done.is_set()
        after = engine.submit(prompts[1], SamplingParams(max_tokens=4, temperature=0.0))
        engine.resume()
        assert after.done.wait(60)
    finally:
        engine.stop()
    aborted = running.completion()
    assert aborted.finish_reason == "abort" and 3 <= len(aborted.token_ids) < 200
    prefix = SamplingParams(max_tokens=len(aborted.token_ids), temperature=0.0, ignore_eos=True)
    assert aborted.token_ids == generate_without_cache(model, prompts[0], prefix).token_ids
    assert waiting.completion().finish_reason == "abort" and waiting.completion().token_ids == []
    assert after.completion().finish_reason in ("length", "stop")


def test_text_prompts_need_a_tokenizer_and_bad_prompts_are_rejected(model):
    engine = Engine(model)
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.submit("hello")
    with pytest.raises(ValueError, match="token ids"):
        engine.submit([1, VOCAB + 5])
    with pytest.raises(ValueError, match="context length"):
        engine.submit([2] * 10, SamplingParams(max_tokens=model.config.max_position_embeddings))
    with pytest.raises(ValueError, match="top_p"):
        engine.submit([2], SamplingParams(top_p=0.0))


def test_bfloat16_engine_reports_the_bfloat16_models_logprobs():
    model = tiny_model(sliding_window=WINDOW, seed=1, scale=0.04).to(torch.bfloat16)
    prompt = _prompts(1, lengths=(12,))[0]
    [done] = Engine(model).generate(prompt, SamplingParams(max_tokens=20, temperature=1.0, seed=0, ignore_eos=True))
    expected = _model_logprobs(model, prompt, done.token_ids).gather(-1, torch.tensor(done.token_ids)[:, None])[:, 0]
    # Cached (one token at a time) and recomputed bf16 activations round differently, by up to ~0.1 nats here;
    # a wrong key or position would be off by whole nats.
    error = (torch.tensor(done.logprobs) - expected).abs()
    assert error.max().item() < 0.25 and error.mean().item() < 0.05


def test_lagoon_greedy_equals_transformers_generate(checkpoint):
    transformers = pytest.importorskip("transformers")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = transformers.LagunaForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    engine = Engine.from_checkpoint(checkpoint)
    prompt = _prompts(1, lengths=(10,))[0]
    window = engine.config.sliding_window
    out = reference.generate(torch.tensor([prompt]), max_new_tokens=2 * window + 8, do_sample=False,
                             eos_token_id=None, pad_token_id=9)
    [ours] = engine.generate(prompt, SamplingParams(max_tokens=2 * window + 8, temperature=0.0, ignore_eos=True))
    assert ours.token_ids == out[0, len(prompt):].tolist()


def test_generate_is_thread_safe_with_a_background_loop(model):
    engine = Engine(model, max_batch=8)
    engine.start()
    results: dict[int, list[int]] = {}
    prompts = _prompts(6)

    def client(i: int) -> None:
        [done] = engine.generate(prompts[i], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
        results[i] = done.token_ids

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        engine.stop()
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    assert [results[i] for i in range(6)] == [generate_without_cache(model, p, params).token_ids for p in prompts]
