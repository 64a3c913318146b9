"""Routing capture and replay: replaying a model's own routing changes nothing; replaying other experts
routes there while the gate weights (and their gradients) still come from the model's router."""

from __future__ import annotations

import torch

from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.model.routing import RoutingCapture, RoutingReplay, routers, topk_disagreement


def _model() -> LagunaForCausalLM:
    torch.manual_seed(0)
    return LagunaForCausalLM(preset_config("tiny", num_hidden_layers=3, vocab_size=128))


def test_replaying_the_models_own_routing_is_exact_and_other_experts_take_effect_with_router_gradients():
    model = _model()
    ids_BT = torch.randint(0, 128, (2, 12))
    with torch.no_grad(), RoutingCapture(model) as capture:
        reference = model(ids_BT).logits
    own_LNk = capture.experts_LNk
    L, N, k = own_LNk.shape
    assert L == len(routers(model)) and N == 24 and k == model.config.num_experts_per_tok
    with torch.no_grad(), RoutingReplay(model, own_LNk.view(L, 2, 12, k)):
        assert torch.equal(model(ids_BT).logits, reference)
    assert topk_disagreement(model, ids_BT, own_LNk.view(L, 2, 12, k)) == (0.0, L * N)

    # Other experts (each token's choice shifted by one expert), except where −1 leaves the router's own.
    other_LNk = (own_LNk + 1) % model.config.num_experts
    other_LNk[:, :3] = -1
    with RoutingReplay(model, other_LNk.view(L, 2, 12, k)), RoutingCapture(model) as replayed:
        logits = model(ids_BT).logits
    assert torch.equal(replayed.experts_LNk[:, 3:], other_LNk[:, 3:])
    assert torch.equal(replayed.experts_LNk[:, :3], own_LNk[:, :3])
    assert not torch.allclose(logits, reference)
    logits.float().logsumexp(-1).sum().backward()
    assert all(router.weight.grad is not None and router.weight.grad.abs().sum() > 0 for router in routers(model))
    disagree, compared = topk_disagreement(model, ids_BT, other_LNk.view(L, 2, 12, k))
    assert compared == L * (N - 3) and disagree > 0
