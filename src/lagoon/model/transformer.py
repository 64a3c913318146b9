"""The Laguna decoder: embeddings → L × (attention, MLP or MoE) → norm → LM head.

Module and parameter names equal transformers' ``LagunaForCausalLM`` runtime names (fused expert stacks),
so ``state_dict()`` keys need no renaming except where the on-disk Hugging Face format splits experts
(see `lagoon.model.hf`).

Shape legend: B batch, T positions, D model width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lagoon.model.config import ModelConfig
from lagoon.model.layers import Attention, KVCacheLayer, RMSNorm, RotaryEmbedding, SwiGLU, attention_mask
from lagoon.model.moe import MoE

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    """What `LagunaForCausalLM.forward` returns."""

    logits: torch.Tensor | None
    """[B, T, V] next-token logits (None when `return_logits=False`)."""
    loss: torch.Tensor | None = None
    """Mean cross-entropy over targets that are not IGNORE_INDEX, plus any enabled router losses."""
    lm_loss: torch.Tensor | None = None
    """The cross-entropy part of `loss` alone."""
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    """Router losses by name (load_balance, router_z), already weighted by their coefficients."""
    hidden_states: torch.Tensor | None = None
    """[B, T, D] final normalised hidden states (when requested)."""


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.self_attn = Attention(config, layer_idx)
        if config.mlp_layer_types[layer_idx] == "sparse":
            self.mlp: nn.Module = MoE(config)
        else:
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x_BTD, rotary, mask, cache=None):
        x_BTD = x_BTD + self.self_attn(self.input_layernorm(x_BTD), rotary, mask, cache)
        return x_BTD + self.mlp(self.post_attention_layernorm(x_BTD))


class LagunaModel(nn.Module):
    """The decoder stack without the LM head (transformers' ``LagunaModel``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = nn.ModuleDict({
            kind: RotaryEmbedding(config.rope_parameters[kind], config.head_dim, config.max_position_embeddings)
            for kind in sorted(set(config.layer_types))
        })
        self.windows = {kind: (config.sliding_window if kind == "sliding_attention" else None)
                        for kind in self.rotary}

    def forward(
        self,
        input_ids_BT: torch.Tensor,
        position_ids_BT: torch.Tensor,
        document_ids_BT: torch.Tensor | None,
        cache: KVCacheLayer | None = None,
    ) -> torch.Tensor:
        x_BTD = self.embed_tokens(input_ids_BT)
        T = input_ids_BT.shape[1]
        rotary = {kind: rope(position_ids_BT, x_BTD.dtype) for kind, rope in self.rotary.items()}
        masks = {}
        if cache is None:
            masks = {kind: attention_mask(document_ids_BT, window, T, x_BTD.device) for kind, window in self.windows.items()}
        for layer in self.layers:
            x_BTD = layer(x_BTD, rotary[layer.layer_type], masks.get(layer.layer_type), cache)
        return self.norm(x_BTD)


def positions_from_documents(document_ids_BT: torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 at every document boundary of a packed row."""
    B, T = document_ids_BT.shape
    index_BT = torch.arange(T, device=document_ids_BT.device).expand(B, T)
    starts_BT = torch.ones_like(document_ids_BT, dtype=torch.bool)
    starts_BT[:, 1:] = document_ids_BT[:, 1:] != document_ids_BT[:, :-1]
    start_index_BT = torch.where(starts_BT, index_BT, torch.zeros_like(index_BT)).cummax(dim=1).values
    return index_BT - start_index_BT


class LagunaForCausalLM(nn.Module):
    """Laguna causal language model.

    ``model(input_ids)`` returns a `ModelOutput` whose ``.logits`` are [B, T, V]. Pass ``targets``
    (already shifted: ``targets[:, t]`` is the token after position t; IGNORE_INDEX skips a position)
    to get ``.loss``; pass ``document_ids`` to keep packed documents from attending to each other.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LagunaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()
        if self.model.embed_tokens.weight.device.type != "meta":
            self.init_weights()

    def tie_weights(self) -> None:
        """Share the LM head with the input embedding when the config says so (again after ``to_empty``)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Initialise every tensor; also valid after construction on the meta device and ``to_empty``.

        - embeddings, attention q/k/v/g, MLP gate/up, router, expert gate_up, LM head: N(0, σ), σ = initializer_range;
        - attention o_proj and every MLP/expert down projection: N(0, σ/√(2L)), the GPT-2 residual scaling
          (Radford et al. 2019, §2.3), so the residual stream's variance does not grow with depth;
        - RMSNorm weights 1; biases and the router correction bias 0; RoPE tables recomputed.
        """
        self.tie_weights()
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.lm_head.weight.device).manual_seed(seed)
        for name, param in self.named_parameters():
            self.init_parameter(name, param, generator)
        self.reset_rotary()

    @torch.no_grad()
    def init_parameter(self, name: str, tensor: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Fill `tensor` (parameter `name`'s full value, or a stand-in of its shape) by `init_weights`' rule."""
        std = self.config.initializer_range
        residual_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith("e_score_correction_bias") or leaf == "bias":
            tensor.zero_()
        elif "norm" in name.rsplit(".", 2)[-2] and leaf == "weight":
            tensor.fill_(1.0)
        elif "o_proj" in name or "down_proj" in name:
            tensor.normal_(0.0, residual_std, generator=generator)
        else:
            tensor.normal_(0.0, std, generator=generator)

    def reset_rotary(self) -> None:
        """Recompute the RoPE tables (non-persistent buffers, empty after meta construction)."""
        for rope in self.model.rotary.values():
            rope.reset_parameters()

    # ------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        targets: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCacheLayer | None = None,
        return_logits: bool = True,
        return_hidden_states: bool = False,
    ) -> ModelOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, time], got shape {tuple(input_ids.shape)}")
        if position_ids is None:
            if document_ids is not None:
                position_ids = positions_from_documents(document_ids)
            else:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        hidden_BTD = self.model(input_ids, position_ids, document_ids, cache)
        logits_BTV = self.lm_head(hidden_BTD) if (return_logits or targets is not None) else None
        output = ModelOutput(logits=logits_BTV if return_logits else None,
                             hidden_states=hidden_BTD if return_hidden_states else None)
        if targets is not None:
            output.lm_loss = F.cross_entropy(logits_BTV.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
            output.aux_losses = self.router_losses()
            output.loss = output.lm_loss + sum(output.aux_losses.values(), torch.zeros((), device=output.lm_loss.device))
        return output

    # ------------------------------------------------------------------------------------------------
    def moe_blocks(self) -> list[MoE]:
        return [layer.mlp for layer in self.model.layers if isinstance(layer.mlp, MoE)]

    def router_losses(self) -> dict[str, torch.Tensor]:
        """Sum of each enabled router loss over the sparse layers of the last forward pass."""
        totals: dict[str, torch.Tensor] = {}
        for block in self.moe_blocks():
            for name, value in block.aux_losses.items():
                totals[name] = totals.get(name, 0) + value
        return totals

    @torch.no_grad()
    def update_router_biases(self, group: dist.ProcessGroup | None = None) -> dict[str, float]:
        """The aux-loss-free bias step; call once per optimizer step. Returns expert-load statistics.

        ``max_load``: the busiest expert's load relative to the mean (1.0 is perfect balance),
        averaged over sparse layers; ``min_load``: the same for the idlest expert.
        """
        rate = self.config.router_bias_update_rate
        max_loads, min_loads = [], []
        for block in self.moe_blocks():
            counts_E = block.update_bias(rate, group)
            if counts_E is not None and counts_E.sum() > 0:
                mean = counts_E.mean()
                max_loads.append(float(counts_E.max() / mean))
                min_loads.append(float(counts_E.min() / mean))
        if not max_loads:
            return {}
        return {"max_load": sum(max_loads) / len(max_loads), "min_load": sum(min_loads) / len(min_loads)}

    def expert_counts(self) -> list[torch.Tensor | None]:
        """Per sparse layer, the expert assignment counts recorded since the last bias update."""
        return [block.expert_counts for block in self.moe_blocks()]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
