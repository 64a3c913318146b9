"""Named model shapes, from a CPU-sized `tiny` up to the published Laguna XS.2 and M.1.

Each preset is a dict of `ModelConfig` fields; per-layer lists are derived from patterns, so
``--set model.num_hidden_layers=N`` keeps a preset valid. Sources for the published shapes:
XS.2 — its Hugging Face ``config.json`` (poolside/Laguna-XS.2); M.1 — the Laguna-M.1 model card
(70 layers: 3 dense then 67 MoE, global attention everywhere, 64 query / 8 KV heads, 256 experts top-16,
per-element gate) and its published config values (hidden 4096, expert and shared width 1024).
"""

from __future__ import annotations

from typing import Any

_LOCAL_THEN_GLOBAL = {
    # A global layer first, then three sliding-window layers (XS.2's layer_types: full where i % 4 == 0).
    "attention_pattern": ["full_attention", "sliding_attention", "sliding_attention", "sliding_attention"],
}

PRESETS: dict[str, dict[str, Any]] = {
    # ~2.7M total / 1.8M active parameters: hundreds of steps a minute on two CPU cores.
    "tiny": {
        **_LOCAL_THEN_GLOBAL,
        "vocab_size": 4096,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "attention_heads_by_type": {"full_attention": 4, "sliding_attention": 4},
        "max_position_embeddings": 4096,
        "sliding_window": 64,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 128,
        "shared_expert_intermediate_size": 128,
        "moe_routed_scaling_factor": 1.0,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 500000.0, "partial_rotary_factor": 0.5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
        },
    },
    # ~60M total / ~20M active: the largest shape practical for ablations on a CPU.
    "small": {
        **_LOCAL_THEN_GLOBAL,
        "vocab_size": 8192,
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "attention_heads_by_type": {"full_attention": 6, "sliding_attention": 8},
        "max_position_embeddings": 8192,
        "sliding_window": 256,
        "num_experts": 16,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 256,
        "shared_expert_intermediate_size": 256,
        "moe_routed_scaling_factor": 1.0,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 500000.0, "partial_rotary_factor": 0.5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
        },
    },
    # Laguna XS.2: 33.44B total / 3.02B active.
    "laguna-xs2": {
        **_LOCAL_THEN_GLOBAL,
        "vocab_size": 100352,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 40,
        "num_attention_heads": 48,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "attention_heads_by_type": {"full_attention": 48, "sliding_attention": 64},
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-6,
        "sliding_window": 512,
        "gating": True,
        "num_experts": 256,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 512,
        "shared_expert_intermediate_size": 512,
        "moe_routed_scaling_factor": 2.5,
        "moe_router_logit_softcapping": 0.0,
        "router_aux_loss_coef": 0.0,
        "num_dense_layers": 1,
        "bos_token_id": 2,
        "eos_token_id": [2, 24],
        "pad_token_id": 9,
        "rope_parameters": {
            "full_attention": {
                "rope_type": "yarn", "rope_theta": 500000.0, "factor": 32.0,
                "original_max_position_embeddings": 4096, "beta_fast": 64.0, "beta_slow": 1.0,
                "attention_factor": 1.0, "partial_rotary_factor": 0.5,
            },
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
            "original_max_position_embeddings": 4096,
        },
    },
    # Laguna M.1: 225.8B total / 23.4B active.
    "laguna-m1": {
        "attention_pattern": ["full_attention"],
        "vocab_size": 100352,
        "hidden_size": 4096,
        "intermediate_size": 16384,
        "num_hidden_layers": 70,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-6,
        "gating": "per-element",
        "num_experts": 256,
        "num_experts_per_tok": 16,
        "moe_intermediate_size": 1024,
        "shared_expert_intermediate_size": 1024,
        "moe_routed_scaling_factor": 1.0,
        "num_dense_layers": 3,
        "router_aux_loss_coef": 0.0,
        "bos_token_id": 2,
        "eos_token_id": [2, 24],
        "pad_token_id": 9,
        "rope_parameters": {
            "full_attention": {
                "rope_type": "yarn", "rope_theta": 500000.0, "factor": 32.0,
                "original_max_position_embeddings": 4096, "beta_fast": 64.0, "beta_slow": 1.0,
                "attention_factor": 1.0, "partial_rotary_factor": 1.0,
            },
        },
    },
}


def preset_config(name: str, **overrides: Any):
    """A validated `ModelConfig` for preset `name` with keyword overrides."""
    from lagoon.configio import from_dict
    from lagoon.model.config import ModelConfig

    return from_dict(ModelConfig, {"preset": name, **overrides}, "model")
