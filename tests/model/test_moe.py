"""Expert paths agree, gradients reach what they should, and the aux-loss-free bias balances a skewed router."""

from __future__ import annotations

import copy

import torch

from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.model.moe import MoE, grouped_mm_supported


def _pair(**overrides):
    config = preset_config("tiny", vocab_size=64, **overrides)
    grouped = LagunaForCausalLM(config)
    loop = copy.deepcopy(grouped)
    for block in loop.moe_blocks():
        block.experts.implementation = "loop"
    return grouped, loop


def test_grouped_and_loop_experts_agree_in_outputs_and_gradients():
    assert grouped_mm_supported("cpu", torch.float32)
    grouped, loop = _pair(num_experts=8, num_experts_per_tok=3)
    input_ids = torch.randint(0, 64, (3, 17))
    targets = torch.randint(0, 64, (3, 17))
    out_grouped = grouped(input_ids, targets=targets)
    out_loop = loop(input_ids, targets=targets)
    assert torch.allclose(out_grouped.logits, out_loop.logits, atol=1e-5)
    out_grouped.loss.backward()
    out_loop.loss.backward()
    for (name, a), b in zip(grouped.named_parameters(), loop.parameters()):
        if a.requires_grad:
            assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_experts_without_tokens_still_match_between_paths():
    grouped, loop = _pair(num_experts=16, num_experts_per_tok=1)
    input_ids = torch.randint(0, 64, (1, 3))  # 3 tokens can reach at most 3 of 16 experts
    (grouped(input_ids).logits.square().mean()).backward()
    (loop(input_ids).logits.square().mean()).backward()
    for (name, a), b in zip(grouped.named_parameters(), loop.parameters()):
        if a.requires_grad:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_every_trainable_parameter_gets_a_gradient_and_the_correction_bias_does_not():
    model = LagunaForCausalLM(preset_config("tiny", vocab_size=64, num_experts=4, num_experts_per_tok=2))
    input_ids = torch.randint(0, 64, (4, 32))
    model(input_ids, targets=torch.randint(0, 64, (4, 32))).loss.backward()
    for name, param in model.named_parameters():
        if name.endswith("e_score_correction_bias"):
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_bias_update_evens_out_a_skewed_router():
    config = preset_config("tiny", vocab_size=64, num_experts=8, num_experts_per_tok=2, router_bias_update_rate=0.01)
    block = MoE(config).train()
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0, 0.1)
        block.gate.e_score_correction_bias.zero_()
        block.gate.weight[0] += 0.05  # inputs have a positive mean, so experts 0 and 1 usually win
        block.gate.weight[1] += 0.04
    x_BTD = torch.randn(8, 64, config.hidden_size) + 0.5

    def max_load() -> float:
        with torch.no_grad():
            block(x_BTD)
        counts = block.update_bias(config.router_bias_update_rate)
        return float(counts.max() / counts.mean())

    before = max_load()
    for _ in range(200):
        after = max_load()
    assert before > 3.0, before  # 4.0 would mean 2 of 8 experts take every assignment
    assert after < 1.2, after
    biases = block.gate.e_score_correction_bias
    assert abs(float(biases.mean())) < 1e-5  # re-centred
    assert biases[0] < biases[2:].mean()      # the overloaded expert is biased down


def test_router_losses_are_added_when_enabled():
    config = preset_config("tiny", vocab_size=64, load_balance_loss_coef=0.01, router_z_loss_coef=0.001)
    model = LagunaForCausalLM(config).train()
    output = model(torch.randint(0, 64, (2, 16)), targets=torch.randint(0, 64, (2, 16)))
    assert set(output.aux_losses) == {"load_balance", "router_z"}
    expected = output.lm_loss + output.aux_losses["load_balance"] + output.aux_losses["router_z"]
    assert torch.allclose(output.loss, expected)
