"""Routing replay in the trainer: the experts recorded per turn line up with the packed tokens, and replaying
the engine's own choices reproduces the trainer's log-probabilities while other choices change them."""

from __future__ import annotations

import torch

from lagoon.agent.clients import RoutedExperts
from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.model.routing import RoutingCapture
from lagoon.rl.batching import pack, samples_from_groups
from lagoon.rl.loss import sequence_logprobs
from lagoon.rl.replay import replay
from lagoon.rl.trajectory import from_arrow, to_arrow
from tests.rl.helpers import make_group


def test_recorded_experts_follow_their_tokens_into_the_micro_batch_and_replay_them():
    torch.manual_seed(0)
    model = LagunaForCausalLM(preset_config("tiny", num_hidden_layers=3, vocab_size=128)).eval()
    group = make_group("run", 0, task=3, size=2)
    for trajectory in group:
        context: list[int] = []
        for index, turn in enumerate(trajectory.turns):
            ran = context + turn.prompt_ids + turn.completion_ids[:-1]
            with torch.no_grad(), RoutingCapture(model) as capture:
                model(torch.tensor([ran]))
            rows = capture.experts_LNk.permute(1, 0, 2).numpy()
            start = len(context) - 1 if context else 0           # what this turn ran first (table contract)
            turn.routed_experts = RoutedExperts.from_array(rows[start:])
            context = context + turn.prompt_ids + turn.completion_ids
    group = from_arrow(to_arrow(group))                            # through the table's Arrow form
    samples = samples_from_groups([group])
    [mb] = pack(samples, micro_batch_tokens=4096)
    L, k = len(model.moe_blocks()), model.config.num_experts_per_tok
    assert mb.routed_experts.shape == (*mb.input_ids.shape, L, k)
    # Every token but each sequence's last has its experts; replaying them changes nothing.
    recorded = (mb.routed_experts >= 0).all(-1).all(-1)
    assert int(recorded.sum()) == sum(s.tokens for s in samples) - len(samples)
    with torch.no_grad():
        free = sequence_logprobs(model, mb.input_ids, mb.document_ids)
        with replay(model, mb.routed_experts, True):
            replayed = sequence_logprobs(model, mb.input_ids, mb.document_ids)
        shifted = mb.routed_experts.clone()
        shifted[shifted >= 0] = (shifted[shifted >= 0] + 1) % model.config.num_experts
        with replay(model, shifted, True):
            other = sequence_logprobs(model, mb.input_ids, mb.document_ids)
    assert torch.allclose(free, replayed, atol=1e-6)
    assert not torch.allclose(free[mb.loss_mask], other[mb.loss_mask], atol=1e-3)
