"""Laguna's building blocks: RMSNorm, rotary embeddings (default and YaRN), gated GQA attention, SwiGLU.

Shape legend: B batch, T query positions, S key positions, D model width, H query heads,
K key/value heads, Dh head width, R rotary channels, F MLP width.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lagoon.model.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32 (Zhang & Sennrich 2019), scaled by a learned weight."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_fp32 = x.float()
        x_fp32 = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x_fp32.to(x.dtype)


# ----------------------------------------------------------------------------------------------------
# Rotary position embeddings


def rope_frequencies(rope: dict[str, Any], head_dim: int, max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [R/2] and the cos/sin scale for one layer type's RoPE settings.

    ``default``: θ_i = theta^(−2i/R) (Su et al. 2021) over the first R = head_dim·partial_rotary_factor channels.
    ``yarn``: NTK-by-parts interpolation with a linear ramp between beta_fast and beta_slow rotations and the
    attention temperature 0.1·ln(factor)+1 (Peng et al. 2023, "YaRN", §3.2–3.4), as transformers computes it.
    """
    theta = float(rope["rope_theta"])
    rotary = int(head_dim * float(rope.get("partial_rotary_factor", 1.0)))
    exponents = torch.arange(0, rotary, 2, dtype=torch.int64).float() / rotary
    inv_freq = 1.0 / (theta**exponents)
    if rope.get("rope_type", "default") == "default":
        return inv_freq, 1.0

    factor = float(rope["factor"])
    original = int(rope["original_max_position_embeddings"])
    beta_fast = float(rope.get("beta_fast") or 32)
    beta_slow = float(rope.get("beta_slow") or 1)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        if rope.get("mscale") and rope.get("mscale_all_dim"):
            attention_factor = mscale(factor, rope["mscale"]) / mscale(factor, rope["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)

    def correction_dim(rotations: float) -> float:
        return (rotary * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    # transformers reads `truncate` from the top level of rope_parameters, which for Laguna is keyed by
    # layer type, so it is always the default (True); lagoon matches that.
    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), rotary - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(rotary // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation_weight = 1 - ramp
    inv_freq = (inv_freq / factor) * (1 - extrapolation_weight) + inv_freq * extrapolation_weight
    return inv_freq, float(attention_factor)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for one layer type; applied to the first R channels of each head.

    The inverse frequencies stay fp32 on purpose (a plain attribute, not a buffer), so casting the model
    to bf16 never coarsens the angles; cos/sin are cast to the activations' dtype after they are computed.
    """

    def __init__(self, rope: dict[str, Any], head_dim: int, max_position_embeddings: int):
        super().__init__()
        self.rope = dict(rope)
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.inv_freq, self.attention_scaling = rope_frequencies(self.rope, self.head_dim, self.max_position_embeddings)

    def forward(self, position_ids_BT: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inv_freq.device != position_ids_BT.device:
            self.inv_freq = self.inv_freq.to(position_ids_BT.device)
        freqs_BTr = position_ids_BT[..., None].float() * self.inv_freq
        angles_BTR = torch.cat((freqs_BTr, freqs_BTr), dim=-1)
        cos = angles_BTR.cos() * self.attention_scaling
        sin = angles_BTR.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def apply_rotary(x_BHTDh: torch.Tensor, cos_BTR: torch.Tensor, sin_BTR: torch.Tensor) -> torch.Tensor:
    """Rotate the first R channels of every head by the position's angle (rotate-half convention)."""
    rotary = cos_BTR.shape[-1]
    x_rot, x_pass = x_BHTDh[..., :rotary], x_BHTDh[..., rotary:]
    cos, sin = cos_BTR[:, None], sin_BTR[:, None]
    half = rotary // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)


# ----------------------------------------------------------------------------------------------------
# Attention


class KVCacheLayer(Protocol):
    """What attention needs from an inference cache (see `lagoon.infer`)."""

    def update(self, layer_idx: int, key_BKTDh: torch.Tensor, value_BKTDh: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store the new keys/values; return all visible keys, values and a boolean mask [B,1,T,S] (or None)."""
        ...


def attention_mask(
    document_ids_BT: torch.Tensor | None, window: int | None, length: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean mask [B|1, 1, T, T], True where a query may attend a key; None means plain causal.

    A key is visible when it is not in the future, belongs to the same document, and (on sliding
    layers) lies within the last `window` positions, the query's own included.
    """
    if document_ids_BT is None and (window is None or window >= length):
        return None
    query = torch.arange(length, device=device)[:, None]
    key = torch.arange(length, device=device)[None, :]
    mask_TT = key <= query
    if window is not None and window < length:
        mask_TT = mask_TT & (key > query - window)
    mask = mask_TT[None, None]
    if document_ids_BT is not None:
        same_document = document_ids_BT[:, None, :, None] == document_ids_BT[:, None, None, :]
        mask = mask & same_document
    return mask


class Attention(nn.Module):
    """Grouped-query attention with QK-RMSNorm, partial RoPE and a softplus output gate (Laguna)."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads_per_layer[layer_idx]
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.layer_type = config.layer_types[layer_idx]
        self.window = config.sliding_window if self.layer_type == "sliding_attention" else None
        width, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(width, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(width, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(width, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, width, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.gate_per_head = config.gate_per_head
        gates = self.num_heads if self.gate_per_head else self.num_heads * self.head_dim
        self.g_proj = nn.Linear(width, gates, bias=False)

    def forward(
        self,
        x_BTD: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: KVCacheLayer | None = None,
    ) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        q_BTHDh = self.q_proj(x_BTD).view(B, T, self.num_heads, self.head_dim)
        k_BTKDh = self.k_proj(x_BTD).view(B, T, self.num_kv_heads, self.head_dim)
        v_BTKDh = self.v_proj(x_BTD).view(B, T, self.num_kv_heads, self.head_dim)
        q_BHTDh = self.q_norm(q_BTHDh).transpose(1, 2)
        k_BKTDh = self.k_norm(k_BTKDh).transpose(1, 2)
        v_BKTDh = v_BTKDh.transpose(1, 2)
        cos, sin = rotary
        q_BHTDh = apply_rotary(q_BHTDh, cos, sin)
        k_BKTDh = apply_rotary(k_BKTDh, cos, sin)

        is_causal = mask is None
        if cache is not None:
            k_BKTDh, v_BKTDh, mask = cache.update(self.layer_idx, k_BKTDh, v_BKTDh)
            is_causal = False
        out_BHTDh = F.scaled_dot_product_attention(
            q_BHTDh, k_BKTDh, v_BKTDh, attn_mask=mask, is_causal=is_causal and T > 1,
            scale=self.head_dim**-0.5, enable_gqa=self.num_heads != self.num_kv_heads,
        )
        out_BTHDh = out_BHTDh.transpose(1, 2)
        gate = F.softplus(self.g_proj(x_BTD).float()).to(out_BTHDh.dtype)
        gate = gate[..., None] if self.gate_per_head else gate.view(B, T, self.num_heads, self.head_dim)
        out_BTHDh = out_BTHDh * gate
        return self.o_proj(out_BTHDh.reshape(B, T, self.num_heads * self.head_dim))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) · up(x)) (Shazeer 2020)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
