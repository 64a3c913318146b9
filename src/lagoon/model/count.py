"""Parameter counts computed on the meta device, so that even Laguna M.1 is counted without allocating weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lagoon.model.config import ModelConfig
from lagoon.model.moe import Experts
from lagoon.model.transformer import LagunaForCausalLM


@dataclass
class ParameterCount:
    total: int
    """Every parameter (tied embeddings counted once), the router correction biases included."""
    active: int
    """Parameters a single token uses: total minus the routed experts it is not sent to."""
    embedding: int
    """Input embedding plus LM head (counted once when tied)."""
    experts: int
    """All routed-expert weights."""


def count_parameters(config: ModelConfig) -> ParameterCount:
    with torch.device("meta"):
        model = LagunaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    experts = 0
    inactive = 0
    for module in model.modules():
        if isinstance(module, Experts):
            size = module.gate_up_proj.numel() + module.down_proj.numel()
            experts += size
            inactive += size * (config.num_experts - config.num_experts_per_tok) // config.num_experts
    embedding = model.model.embed_tokens.weight.numel()
    if not config.tie_word_embeddings:
        embedding += model.lm_head.weight.numel()
    return ParameterCount(total=total, active=total - inactive, embedding=embedding, experts=experts)
