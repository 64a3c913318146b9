"""Laguna's mixture-of-experts block: sigmoid router with aux-loss-free balancing, routed experts, shared expert.

Shape legend: N tokens (B·T flattened), D model width, E routed experts, F expert width,
k experts per token, M = N·k routed (token, expert) pairs.

Routing (DeepSeek-V3, Liu et al. 2024, §2.1.2): scores s = sigmoid(logits); experts are *selected* by
top-k of s + b, where b is a per-expert correction bias that is never trained by gradients; the
*weights* are the selected s, normalised to sum to one, times the routed scaling factor. After each
optimizer step the bias moves toward balance: b ← b + γ·sign(mean load − load), then is re-centred.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lagoon.model.config import ModelConfig
from lagoon.model.layers import SwiGLU


class Router(nn.Module):
    """Sigmoid top-k router. `e_score_correction_bias` biases selection only; it is updated by `update_bias`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.softcap = config.moe_router_logit_softcapping
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.e_score_correction_bias = nn.Parameter(torch.zeros(config.num_experts), requires_grad=False)

    def forward(self, x_ND: torch.Tensor, experts_Nk: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return router logits [N,E] (fp32), normalised top-k weights [N,k] and expert ids [N,k].

        `experts_Nk` (routing replay, `lagoon.model.routing`): route to these experts where ≥ 0 instead of
        this router's own top-k; their weights still come from this router's scores, so gradients reach it.
        """
        logits_NE = F.linear(x_ND, self.weight).float()
        if self.softcap > 0:
            logits_NE = torch.tanh(logits_NE / self.softcap) * self.softcap
        scores_NE = torch.sigmoid(logits_NE)
        _, chosen_Nk = torch.topk(scores_NE + self.e_score_correction_bias.float(), self.top_k, dim=-1)
        if experts_Nk is not None:
            chosen_Nk = torch.where(experts_Nk >= 0, experts_Nk.to(chosen_Nk.dtype), chosen_Nk)
        experts_Nk = chosen_Nk
        weights_Nk = scores_NE.gather(-1, experts_Nk)
        weights_Nk = weights_Nk / weights_Nk.sum(dim=-1, keepdim=True)
        return logits_NE, weights_Nk.to(x_ND.dtype), experts_Nk


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (grouped_mm's backward needs it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


@functools.cache
def grouped_mm_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this torch build runs `torch._grouped_mm` forward and backward for the device and dtype."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        device = torch.device(device_type)
        # Probe with grad enabled whatever the caller's mode, and without touching the global RNG.
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.ones(32, 16, device=device, dtype=dtype, requires_grad=True)
            w = torch.ones(2, 16, 16, device=device, dtype=dtype, requires_grad=True)
            offsets = torch.tensor([16, 32], device=device, dtype=torch.int32)
            y = _ContiguousGrad.apply(torch._grouped_mm(x, w, offs=offsets))
            (y * 1.5).sum().backward()
        return True
    except (RuntimeError, NotImplementedError):
        return False


class Experts(nn.Module):
    """E SwiGLU experts stored as stacks: gate_up_proj [E, 2F, D] (gate rows, then up rows), down_proj [E, D, F]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.implementation = config.experts_implementation
        width, hidden = config.hidden_size, config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(config.num_experts, 2 * hidden, width))
        self.down_proj = nn.Parameter(torch.empty(config.num_experts, width, hidden))

    def forward(self, x_ND: torch.Tensor, experts_Nk: torch.Tensor, weights_Nk: torch.Tensor) -> torch.Tensor:
        N, k = experts_Nk.shape
        # Sort the N·k (token, expert) pairs by expert so each expert's tokens are one contiguous block.
        order_M = experts_Nk.reshape(-1).argsort(stable=True)
        tokens_M = order_M // k
        counts_E = torch.bincount(experts_Nk.reshape(-1), minlength=self.num_experts)
        x_MD = x_ND[tokens_M]
        use_grouped = self.implementation == "grouped" and grouped_mm_supported(x_ND.device.type, x_ND.dtype)
        if use_grouped:
            y_MD = self._grouped(x_MD, counts_E)
        else:
            y_MD = self._loop(x_MD, counts_E)
        y_MD = y_MD * weights_Nk.reshape(-1)[order_M, None]
        return torch.zeros_like(x_ND).index_add_(0, tokens_M, y_MD.to(x_ND.dtype))

    def _grouped(self, x_MD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """All experts in two grouped GEMMs (`torch._grouped_mm`, offsets = cumulative token counts)."""
        offsets_E = counts_E.cumsum(0).to(torch.int32)
        h_M2F = _ContiguousGrad.apply(torch._grouped_mm(x_MD, self.gate_up_proj.transpose(1, 2), offs=offsets_E))
        gate_MF, up_MF = h_M2F.chunk(2, dim=-1)
        a_MF = F.silu(gate_MF) * up_MF
        return _ContiguousGrad.apply(torch._grouped_mm(a_MF, self.down_proj.transpose(1, 2), offs=offsets_E))

    def _loop(self, x_MD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """Reference path: one expert at a time over its contiguous block of tokens."""
        outputs = []
        start = 0
        for expert, count in enumerate(counts_E.tolist()):
            if count == 0:
                continue
            block_CD = x_MD[start : start + count]
            gate_CF, up_CF = F.linear(block_CD, self.gate_up_proj[expert]).chunk(2, dim=-1)
            outputs.append(F.linear(F.silu(gate_CF) * up_CF, self.down_proj[expert]))
            start += count
        if not outputs:
            return x_MD.new_zeros(x_MD.shape)
        return torch.cat(outputs)


class MoE(nn.Module):
    """Routed experts (scaled) plus an always-on shared expert.

    While training, it counts how many (token, expert) assignments each expert receives; the counts
    feed the correction-bias update and the expert-load metrics, and are kept out of the state dict.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = Router(config)
        self.experts = Experts(config)
        self.shared_experts = SwiGLU(config.hidden_size, config.shared_expert_intermediate_size)
        self.routed_scaling_factor = config.moe_routed_scaling_factor
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.expert_counts: torch.Tensor | None = None
        self.aux_losses: dict[str, torch.Tensor] = {}
        self.load_balance_coef = config.load_balance_loss_coef
        self.z_loss_coef = config.router_z_loss_coef

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(-1, D)
        logits_NE, weights_Nk, experts_Nk = self.gate(x_ND)
        y_ND = self.experts(x_ND, experts_Nk, weights_Nk) * self.routed_scaling_factor + self.shared_experts(x_ND)
        if self.training:
            self._record(logits_NE, experts_Nk)
        return y_ND.view(B, T, D)

    def _record(self, logits_NE: torch.Tensor, experts_Nk: torch.Tensor) -> None:
        counts_E = torch.bincount(experts_Nk.reshape(-1), minlength=self.num_experts).float()
        if self.expert_counts is None or self.expert_counts.device != counts_E.device:
            self.expert_counts = torch.zeros_like(counts_E)
        self.expert_counts += counts_E
        self.aux_losses = {}
        if self.load_balance_coef > 0:
            # Switch/DeepSeek-style balance loss E/k · Σ_i f_i · P_i with f_i the assignment share and P_i
            # the mean normalised sigmoid score (DeepSeek-V3 eq. 17–20, over the micro-batch).
            scores_NE = torch.sigmoid(logits_NE)
            probs_NE = scores_NE / scores_NE.sum(-1, keepdim=True)
            share_E = counts_E / experts_Nk.numel()
            self.aux_losses["load_balance"] = self.load_balance_coef * self.num_experts * (share_E * probs_NE.mean(0)).sum()
        if self.z_loss_coef > 0:
            self.aux_losses["router_z"] = self.z_loss_coef * torch.logsumexp(logits_NE, dim=-1).pow(2).mean()

    @torch.no_grad()
    def update_bias(self, rate: float, group: dist.ProcessGroup | None = None) -> torch.Tensor | None:
        """Apply b ← b + rate·sign(mean − load) from the counts accumulated since the last call; reset them.

        Counts are summed over data-parallel ranks first, so every replica applies the same update.
        Returns the global counts [E] (None if nothing was recorded).
        """
        counts_E = self.expert_counts
        if counts_E is None:
            return None
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts_E, group=group)
        bias = self.gate.e_score_correction_bias
        delta_E = rate * torch.sign(counts_E.mean() - counts_E)
        bias += delta_E.to(bias.dtype)
        bias -= bias.mean()
        self.expert_counts = None
        return counts_E
