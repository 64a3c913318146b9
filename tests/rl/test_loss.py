"""CISPO against a hand-computed reference, including clipped tokens, and the fp32 log-prob paths."""

from __future__ import annotations

import math

import pytest
import torch

from lagoon.model import preset_config
from lagoon.model.transformer import LagunaForCausalLM
from lagoon.rl.loss import cispo_loss, fp32_logprobs, fp32_logprobs_reference, sequence_logprobs


def _example():
    # Four positions over a 3-token vocabulary. Position 4 is masked out.
    #   1: logits (0, 0, 0)      → π = 1/3 for y=0; μ = 1/4   → r = 4/3, above 1 + ε_high = 1.2 → weight 1.2
    #   2: logits (ln 2, 0, 0)   → π = 1/2 for y=0; μ = 1/2   → r = 1                          → weight 1
    #   3: logits (ln 2, 0, 0)   → π = 1/4 for y=1; μ = 1/2   → r = 1/2, below 1 − ε_low = 0.8 → weight 0.8
    #   4: logits (0, 1, 2), masked
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0, 0], [math.log(2), 0, 0], [0.0, 1.0, 2.0]],
                          dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 0, 1, 2])
    sampler = torch.tensor([math.log(0.25), math.log(0.5), math.log(0.5), -0.3], dtype=torch.float64)
    advantages = torch.tensor([1.0, -0.5, 2.0, 5.0], dtype=torch.float64)
    mask = torch.tensor([1, 1, 1, 0])
    return logits, targets, sampler, advantages, mask


def test_cispo_loss_and_gradient_match_hand_computation():
    logits, targets, sampler, advantages, mask = _example()
    logprobs = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
    loss, stats = cispo_loss(logprobs, sampler, advantages, mask, num_tokens=3, epsilon_high=0.2, epsilon_low=0.2)
    loss.backward()

    # −J = −1/3 · [1.2·1·ln(1/3) + 1·(−0.5)·ln(1/2) + 0.8·2·ln(1/4)]
    expected_loss = -(1.2 * math.log(1 / 3) - 0.5 * math.log(0.5) + 1.6 * math.log(0.25)) / 3
    assert loss.item() == pytest.approx(expected_loss, abs=1e-12)

    # ∂(−J)/∂z_t = −(w_t·Â_t/N) · (onehot(y_t) − softmax(z_t)); the weights are constants (stop-gradient).
    expected_grad = torch.tensor([
        [-0.4 * (1 - 1 / 3), -0.4 * (0 - 1 / 3), -0.4 * (0 - 1 / 3)],      # w·Â/N = 1.2·1/3 = 0.4 (clipped, still trained)
        [(0.5 / 3) * (1 - 0.5), (0.5 / 3) * (0 - 0.25), (0.5 / 3) * (0 - 0.25)],     # w·Â/N = −0.5/3
        [-(1.6 / 3) * (0 - 0.5), -(1.6 / 3) * (1 - 0.25), -(1.6 / 3) * (0 - 0.25)],  # w·Â/N = 0.8·2/3 (clipped low)
        [0.0, 0.0, 0.0],                                                   # masked: no gradient at all
    ], dtype=torch.float64)
    torch.testing.assert_close(logits.grad, expected_grad, rtol=0, atol=1e-12)

    assert stats.tokens == 3
    assert stats.clipped_high == 1 and stats.clipped_low == 1
    # k3 = r − 1 − ln r per token: (4/3 − 1 − ln 4/3) + 0 + (1/2 − 1 − ln 1/2)
    expected_k3 = (4 / 3 - 1 - math.log(4 / 3)) + (0.5 - 1 - math.log(0.5))
    assert stats.mismatch_kl == pytest.approx(expected_k3, abs=1e-9)
    assert stats.ratio_max == pytest.approx(4 / 3)


def test_unbounded_lower_clip_is_the_default():
    logits, targets, sampler, advantages, mask = _example()
    logprobs = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
    loss, stats = cispo_loss(logprobs, sampler, advantages, mask, num_tokens=3, epsilon_high=0.2)
    # Token 3 now keeps its raw weight r = 1/2.
    expected = -(1.2 * math.log(1 / 3) - 0.5 * math.log(0.5) + 0.5 * 2 * math.log(0.25)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats.clipped_low == 0


def test_on_policy_gradient_is_the_policy_gradient():
    # With μ = π every weight is 1: the gradient equals that of −mean(Â · log π) (REINFORCE with a baseline).
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 5, (6,))
    advantages = torch.randn(6, dtype=torch.float64)
    logprobs = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
    loss, stats = cispo_loss(logprobs, logprobs.detach(), advantages, torch.ones(6), num_tokens=6, epsilon_high=0.2)
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (reference,) = torch.autograd.grad(-(advantages * logprobs).mean(), logits)
    torch.testing.assert_close(grad, reference)
    assert stats.mismatch_kl == pytest.approx(0.0, abs=1e-12)


def test_micro_batches_sum_to_the_full_batch_loss():
    logits = torch.randn(10, 7, dtype=torch.float64)
    targets = torch.randint(0, 7, (10,))
    logprobs = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
    sampler = logprobs + 0.3 * torch.randn(10, dtype=torch.float64)
    advantages, mask = torch.randn(10, dtype=torch.float64), torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1, 1])
    full, _ = cispo_loss(logprobs, sampler, advantages, mask, num_tokens=8, epsilon_high=0.3)
    parts = sum(cispo_loss(logprobs[s], sampler[s], advantages[s], mask[s], num_tokens=8, epsilon_high=0.3)[0]
                for s in (slice(0, 4), slice(4, 10)))
    assert parts.item() == pytest.approx(full.item(), abs=1e-12)


def test_chunked_fp32_logprobs_match_the_reference():
    hidden = torch.randn(37, 16, dtype=torch.bfloat16)
    weight = torch.randn(50, 16, dtype=torch.bfloat16)
    targets = torch.randint(0, 50, (37,))
    fast = fp32_logprobs(hidden, weight, targets, chunk_tokens=8)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, fp32_logprobs_reference(hidden, weight, targets), rtol=1e-5, atol=1e-5)


def test_sequence_logprobs_match_the_model_logits_and_respect_documents():
    model = LagunaForCausalLM(preset_config("tiny", num_hidden_layers=2, vocab_size=64)).eval()
    ids = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        reference = torch.log_softmax(model(ids).logits.float(), -1)[0, :-1].gather(1, ids[0, 1:, None])[:, 0]
        ours = sequence_logprobs(model, ids, None, chunk_tokens=5)
        torch.testing.assert_close(ours[0, :-1], reference, rtol=1e-5, atol=1e-5)
        # Two documents packed into one row score exactly as they do alone.
        a, b = torch.randint(0, 64, (1, 5)), torch.randint(0, 64, (1, 7))
        packed = sequence_logprobs(model, torch.cat([a, b], 1), torch.tensor([[0] * 5 + [1] * 7]))
        alone = sequence_logprobs(model, b, None)
        torch.testing.assert_close(packed[0, 5:-1], alone[0, :-1], rtol=1e-5, atol=1e-5)
