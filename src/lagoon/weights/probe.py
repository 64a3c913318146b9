"""Checking that a vLLM server holds the trainer's weights: a log-probability probe.

vLLM's own ``/weight_checker`` hashes its *internal* tensors (fused q/k/v, expert stacks repacked for the
CPU kernels), which a trainer cannot recompute without vLLM. What both sides can compute is the model's
function: the probe scores a fixed token sequence — log p(token t+1 | tokens ≤ t) at temperature 1 — on the
server (vLLM's ``prompt_logprobs``) and on the trainer's policy, and the largest difference must stay within
a tolerance: 1e-3 for fp32 servers (observed differences are ~1e-6), 5e-2 for bf16/fp16 ones. Weights that
did not arrive, arrived scrambled or belong to another version move these numbers far more than that.

Shape legend: T probe positions, V vocabulary.
"""

from __future__ import annotations

import random

import torch

from lagoon.errors import LagoonError

PROBE_TOKENS = 24
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 5e-2}


def probe_ids(vocab_size: int, length: int = PROBE_TOKENS, seed: int = 0) -> list[int]:
    """A fixed sequence of ordinary token ids (special ids 0-31 avoided), starting at BOS."""
    from lagoon.tokens import EOS_ID

    rng = random.Random(seed)
    return [EOS_ID] + [rng.randrange(32, vocab_size) for _ in range(length - 1)]


@torch.no_grad()
def policy_logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[t+1] | ids[:t+1]) under `model`, fp32 LM head, t = 0 … T-2."""
    ids_1T = torch.tensor([ids], device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        hidden_1TD = model(ids_1T, return_logits=False, return_hidden_states=True).hidden_states
    finally:
        model.train(was_training)
    logprobs_TV = torch.log_softmax(hidden_1TD[0].float() @ model.lm_head.weight.float().T, dim=-1)
    return logprobs_TV[:-1].gather(1, ids_1T[0, 1:, None])[:, 0].tolist()


def vllm_logprobs(url: str, model_name: str, ids: list[int], timeout_s: float = 120.0) -> list[float]:
    """The same numbers from a vLLM server (``prompt_logprobs`` of a one-token completion)."""
    import httpx

    body = {"model": model_name, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
    try:
        response = httpx.post(f"{url.rstrip('/')}/v1/completions", json=body, timeout=timeout_s)
        response.raise_for_status()
        scored = response.json()["choices"][0]["prompt_logprobs"]
        out = []
        for position, token in enumerate(ids[1:], start=1):
            entry = scored[position][str(token)]
            out.append(float(entry["logprob"] if isinstance(entry, dict) else entry))
        return out
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as error:
        raise LagoonError(f"the weight probe at {url} failed: {error or type(error).__name__}") from None


def probe_difference(model, url: str, model_name: str, ids: list[int] | None = None) -> float:
    """max |log π_trainer − log p_server| over the probe positions."""
    ids = ids or probe_ids(model.config.vocab_size)
    ours = policy_logprobs(model, ids)
    theirs = vllm_logprobs(url, model_name, ids)
    return max(abs(a - b) for a, b in zip(ours, theirs))
