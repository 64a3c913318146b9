"""The Laguna model configuration.

Field names and meanings follow transformers' ``LagunaConfig`` (``model_type = "laguna"``), so a
lagoon config exports to a Hugging Face ``config.json`` one key at a time. A few lagoon-only fields
(marked *lagoon*) control training-time behaviour or derive the per-layer lists from patterns, so a
preset keeps working when ``num_hidden_layers`` is overridden.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from lagoon.errors import ConfigError, check

LayerType = Literal["full_attention", "sliding_attention"]
ROPE_TYPES = ("default", "yarn")

# Keys of config.json that transformers writes for every model and lagoon does not interpret.
HF_BOOKKEEPING_KEYS = {
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "_name_or_path",
    "output_hidden_states", "output_attentions", "return_dict", "chunk_size_feed_forward",
    "is_encoder_decoder", "id2label", "label2id", "problem_type", "use_cache", "output_router_logits",
    "attention_dropout", "moe_apply_router_weight_on_input", "auto_map", "quantization_config",
    "tokenizer_class", "task_specific_params", "architecture",
    # Written by some Laguna exports for other engines; lagoon's layout already implies them.
    "decoder_sparse_step", "mlp_only_layers", "qkv_bias", "norm_topk_prob",
}


def default_rope_parameters() -> dict[str, dict[str, Any]]:
    """Laguna's defaults: half-rotary, theta 5e5 on global layers; full-rotary, theta 1e4 on local ones."""
    return {
        "full_attention": {"rope_type": "default", "rope_theta": 500000.0, "partial_rotary_factor": 0.5},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
    }


@dataclass
class ModelConfig:
    """Architecture of a Laguna MoE decoder (transformers' ``LagunaConfig``)."""

    preset: str | None = None
    """*lagoon*: a named preset (``tiny``, ``small``, ``laguna-xs2``, ``laguna-m1``) whose values fill
    every key not given explicitly."""

    vocab_size: int = 100352
    """Number of token ids."""
    hidden_size: int = 2048
    """Width of the residual stream (D)."""
    intermediate_size: int = 8192
    """Width of the dense SwiGLU MLP on dense layers."""
    num_hidden_layers: int = 40
    """Number of decoder layers."""
    num_attention_heads: int = 48
    """Query heads per layer unless `num_attention_heads_per_layer` or `attention_heads_by_type` say otherwise."""
    num_key_value_heads: int = 8
    """Key/value heads (grouped-query attention); every layer's query heads must be a multiple."""
    head_dim: int = 128
    """Width of one attention head."""
    hidden_act: Literal["silu"] = "silu"
    """Activation of the SwiGLU MLPs."""
    max_position_embeddings: int = 131072
    """Longest context the RoPE tables are meant for."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialization of every weight matrix."""
    rms_norm_eps: float = 1e-6
    """Epsilon of every RMSNorm."""
    tie_word_embeddings: bool = False
    """Share the input embedding and the LM head."""
    rope_parameters: dict[str, Any] = field(default_factory=default_rope_parameters)
    """RoPE per layer type (non-table entries, such as a top-level ``original_max_position_embeddings``, are
    kept for export and otherwise ignored): ``rope_type`` (default | yarn), ``rope_theta``, ``partial_rotary_factor`` and,
    for YaRN, ``factor``, ``original_max_position_embeddings``, optional ``beta_fast``, ``beta_slow``,
    ``attention_factor``, ``mscale``, ``mscale_all_dim``."""
    sliding_window: int = 512
    """Keys visible to a query on sliding-attention layers (the query's own position included)."""
    attention_bias: bool = False
    """Biases on the q/k/v/o projections."""
    gating: bool | str = True
    """Softplus attention-output gate granularity: true or "per-head" (one gate per head), "per-element"
    (one per head channel); false also means per-element, as in transformers."""
    layer_types: list[str] | None = None
    """Attention type of each layer; derived from `attention_pattern` when not given."""
    num_attention_heads_per_layer: list[int] | None = None
    """Query heads of each layer; derived from `attention_heads_by_type` / `num_attention_heads` when not given."""
    mlp_layer_types: list[str] | None = None
    """MLP type of each layer ("dense" | "sparse"); derived from `num_dense_layers` when not given."""
    moe_intermediate_size: int = 512
    """Width of one routed expert (F)."""
    shared_expert_intermediate_size: int = 512
    """Width of the shared expert on sparse layers."""
    num_experts: int = 256
    """Routed experts per sparse layer (E)."""
    num_experts_per_tok: int = 8
    """Experts each token is routed to (top-k)."""
    moe_routed_scaling_factor: float = 1.0
    """Scale of the routed experts' output before the shared expert's output is added."""
    moe_router_logit_softcapping: float = 0.0
    """tanh soft-cap of the router logits (0 disables it)."""
    router_aux_loss_coef: float = 0.001
    """transformers' coefficient of its optional Switch-style auxiliary loss; lagoon keeps it for export."""
    bos_token_id: int | None = None
    """Beginning-of-sequence token id."""
    eos_token_id: int | list[int] | None = None
    """End-of-sequence token id(s)."""
    pad_token_id: int | None = None
    """Padding token id."""

    attention_pattern: list[str] = field(default_factory=lambda: ["full_attention"])
    """*lagoon*: layer types repeated cyclically to fill `layer_types` (Laguna XS.2: 3 sliding, 1 full)."""
    attention_heads_by_type: dict[str, int] = field(default_factory=dict)
    """*lagoon*: query heads per layer type, used to derive `num_attention_heads_per_layer`."""
    num_dense_layers: int = 1
    """*lagoon*: leading dense layers when `mlp_layer_types` is derived (the rest are sparse)."""
    experts_implementation: Literal["grouped", "loop"] = "grouped"
    """*lagoon*: expert compute — one grouped GEMM over all experts, or the reference per-expert loop."""
    router_bias_update_rate: float = 0.001
    """*lagoon*: γ of the aux-loss-free bias update b ← b + γ·sign(mean load − load) (DeepSeek-V3 §2.1.2)."""
    load_balance_loss_coef: float = 0.0
    """*lagoon*: weight of the sequence-free (global-batch) load-balancing loss; 0 disables it."""
    router_z_loss_coef: float = 0.0
    """*lagoon*: weight of the router z-loss (ST-MoE, Zoph et al. 2022 §3); 0 disables it."""

    def __post_init__(self) -> None:
        n = self.num_hidden_layers
        if self.layer_types is None and self.attention_pattern and n > 0:
            pattern = self.attention_pattern
            self.layer_types = [pattern[i % len(pattern)] for i in range(n)]
        if self.mlp_layer_types is None and n > 0:
            dense = max(0, min(self.num_dense_layers, n))
            self.mlp_layer_types = ["dense"] * dense + ["sparse"] * (n - dense)
        if self.num_attention_heads_per_layer is None and self.layer_types is not None:
            by_type = self.attention_heads_by_type
            self.num_attention_heads_per_layer = [by_type.get(t, self.num_attention_heads) for t in self.layer_types]
        self.rope_parameters = copy.deepcopy(self.rope_parameters)

    @staticmethod
    def _preset_defaults(name: str) -> dict[str, Any]:
        from lagoon.model.presets import PRESETS

        if name not in PRESETS:
            raise ConfigError("preset", f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return copy.deepcopy(PRESETS[name])

    # ----------------------------------------------------------------------------------------------
    def validate(self) -> None:
        n = self.num_hidden_layers
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "head_dim", "max_position_embeddings"):
            check(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        check(self.intermediate_size > 0 or "dense" not in (self.mlp_layer_types or []), "intermediate_size",
              "must be positive when any layer is dense")
        check(self.sliding_window > 0, "sliding_window", f"must be positive, got {self.sliding_window}")
        check(self.rms_norm_eps > 0, "rms_norm_eps", "must be positive")
        check(self.initializer_range > 0, "initializer_range", "must be positive")
        check(self.gating in (True, False, "per-head", "per-element"), "gating",
              f"must be true, false, \"per-head\" or \"per-element\"; got {self.gating!r}")
        for name in ("layer_types", "mlp_layer_types", "num_attention_heads_per_layer"):
            values = getattr(self, name)
            check(values is not None and len(values) == n, name,
                  f"must have one entry per layer ({n}), got {0 if values is None else len(values)}")
        for i, kind in enumerate(self.layer_types):
            check(kind in ("full_attention", "sliding_attention"), f"layer_types[{i}]",
                  f"must be \"full_attention\" or \"sliding_attention\", got {kind!r}")
        for i, kind in enumerate(self.mlp_layer_types):
            check(kind in ("dense", "sparse"), f"mlp_layer_types[{i}]", f"must be \"dense\" or \"sparse\", got {kind!r}")
        for i, heads in enumerate(self.num_attention_heads_per_layer):
            check(heads > 0 and heads % self.num_key_value_heads == 0, f"num_attention_heads_per_layer[{i}]",
                  f"{heads} query heads must be a positive multiple of num_key_value_heads ({self.num_key_value_heads})")
        check(self.num_attention_heads % self.num_key_value_heads == 0, "num_attention_heads",
              f"{self.num_attention_heads} must be a multiple of num_key_value_heads ({self.num_key_value_heads})")
        for kind in set(self.layer_types):
            check(kind in self.rope_parameters, "rope_parameters", f"has no entry for layer type {kind!r}")
        for kind in set(self.layer_types):
            check(isinstance(self.rope_parameters[kind], dict), f"rope_parameters.{kind}", "must be a table")
        for kind, rope in self.rope_parameters.items():
            if not isinstance(rope, dict):
                continue
            where = f"rope_parameters.{kind}"
            rope_type = rope.get("rope_type", "default")
            check(rope_type in ROPE_TYPES, f"{where}.rope_type", f"must be one of {ROPE_TYPES}, got {rope_type!r}")
            check(float(rope.get("rope_theta", 0)) > 0, f"{where}.rope_theta", "must be a positive number")
            factor = float(rope.get("partial_rotary_factor", 1.0))
            check(0 < factor <= 1, f"{where}.partial_rotary_factor", f"must be in (0, 1], got {factor}")
            rotary = int(self.head_dim * factor)
            check(rotary >= 2 and rotary % 2 == 0, f"{where}.partial_rotary_factor",
                  f"gives {rotary} rotary channels of head_dim {self.head_dim}; it must be even and at least 2")
            if rope_type == "yarn":
                check(float(rope.get("factor") or 0) >= 1, f"{where}.factor", "YaRN needs a factor >= 1")
                check(int(rope.get("original_max_position_embeddings") or 0) > 0,
                      f"{where}.original_max_position_embeddings", "YaRN needs the pretraining context length")
        if "sparse" in self.mlp_layer_types:
            check(self.num_experts > 0, "num_experts", "must be positive when any layer is sparse")
            check(0 < self.num_experts_per_tok <= self.num_experts, "num_experts_per_tok",
                  f"top-k must be between 1 and num_experts ({self.num_experts}), got {self.num_experts_per_tok}")
            check(self.moe_intermediate_size > 0, "moe_intermediate_size", "must be positive")
            check(self.shared_expert_intermediate_size > 0, "shared_expert_intermediate_size", "must be positive")
        check(self.moe_router_logit_softcapping >= 0, "moe_router_logit_softcapping", "must be >= 0")
        check(self.router_bias_update_rate >= 0, "router_bias_update_rate", "must be >= 0")
        check(self.load_balance_loss_coef >= 0, "load_balance_loss_coef", "must be >= 0")
        check(self.router_z_loss_coef >= 0, "router_z_loss_coef", "must be >= 0")

    # ----------------------------------------------------------------------------------------------
    @property
    def gate_per_head(self) -> bool:
        return self.gating is True or self.gating == "per-head"

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` transformers' ``LagunaConfig`` reads (explicit per-layer lists)."""
        lagoon_only = {"preset", "attention_pattern", "attention_heads_by_type", "num_dense_layers",
                       "experts_implementation", "router_bias_update_rate", "load_balance_loss_coef",
                       "router_z_loss_coef"}
        out: dict[str, Any] = {"architectures": ["LagunaForCausalLM"], "model_type": "laguna"}
        for f in dataclasses.fields(self):
            if f.name not in lagoon_only:
                out[f.name] = copy.deepcopy(getattr(self, f.name))
        return out

    def lagoon_fields(self) -> dict[str, Any]:
        """The lagoon-only training settings, stored beside ``config.json``."""
        return {name: getattr(self, name) for name in ("experts_implementation", "router_bias_update_rate",
                                                       "load_balance_loss_coef", "router_z_loss_coef")}

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], lagoon: dict[str, Any] | None = None) -> "ModelConfig":
        """Read a Laguna ``config.json`` (plus optional lagoon-only fields)."""
        from lagoon.configio import from_dict

        model_type = data.get("model_type", "laguna")
        if model_type != "laguna":
            raise ConfigError("model_type", f"expected a \"laguna\" config.json, got {model_type!r}")
        if data.get("norm_topk_prob", True) is not True:
            raise ConfigError("norm_topk_prob", "false is not part of the Laguna architecture")
        if data.get("moe_apply_router_weight_on_input"):
            raise ConfigError("moe_apply_router_weight_on_input", "true is not supported (transformers does not either)")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        ignored = set(data) - known - HF_BOOKKEEPING_KEYS
        if ignored:
            raise ConfigError(sorted(ignored)[0], "is not a Laguna config key lagoon understands")
        if values.get("rope_parameters") is None:
            values.pop("rope_parameters", None)
        values.update(lagoon or {})
        return from_dict(cls, values)
