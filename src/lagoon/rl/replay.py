"""Routing replay in the RL trainer (``rl.trainer.routing_replay``): train on the experts the rollout chose.

An MoE policy's two halves can disagree about routing: the inference engine and the trainer compute the
router's logits with different kernels (and, asynchronously, different weights), and a tiny difference flips
a top-k choice, which changes the token's whole computation — a source of train–inference mismatch that
importance weights only partly absorb. Replay ("R3") routes every token in the trainer to the experts the
rollout engine recorded for it (the trajectory table's ``routed_experts``), while the gate weights are the
trainer's own router scores of those experts, so the router keeps learning (`lagoon.model.routing`).

Engines record either the model's sparse layers (lagoon) or every layer (vLLM, whose dense layers' rows are
unused); `replay` picks the sparse layers' rows either way.

Shape legend: B rows, T positions, L sparse layers, k experts per token.
"""

from __future__ import annotations

import contextlib

import torch


def sparse_rows(model, experts_BTXk: torch.Tensor) -> torch.Tensor:
    """[L, B, T, k] from a table of all layers' or sparse layers' experts."""
    config = model.config
    sparse = [i for i, kind in enumerate(config.mlp_layer_types) if kind == "sparse"]
    recorded = experts_BTXk.shape[2]
    if recorded == len(config.mlp_layer_types) and recorded != len(sparse):
        experts_BTXk = experts_BTXk[:, :, sparse]
    assert experts_BTXk.shape[2] == len(sparse), "routed experts must cover every sparse layer"
    return experts_BTXk.permute(2, 0, 1, 3).long()


def replay(model, routed_experts_BTXk: torch.Tensor | None, enabled: bool):
    """A context manager: routing replay of the micro-batch's recorded experts, or nothing."""
    from lagoon.model.routing import RoutingReplay

    if not enabled or routed_experts_BTXk is None:
        return contextlib.nullcontext()
    device = next(model.parameters()).device
    return RoutingReplay(model, sparse_rows(model, routed_experts_BTXk).to(device))
