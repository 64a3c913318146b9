"""The per-tensor update rules, shared by the single-process and the distributed optimizers.

- AdamW (Loshchilov & Hutter 2019) with decoupled weight decay θ ← θ·(1 − η·λ), written with the same
  operations as ``torch.optim.AdamW(foreach=True)`` so the two agree to the last bit. It is elementwise,
  so it runs unchanged on a flat shard of many parameters (ZeRO-1).
- Muon's momentum and Nesterov look-ahead in the EMA form of ``torch.optim.Muon``:
  m ← μ·m + (1 − μ)·g, direction = (1 − μ)·g + μ·m (or m without Nesterov).
- Muon's per-matrix update scale and the decoupled weight decay at the unscaled learning rate.
- Global gradient norm and clipping (the arithmetic of ``torch.nn.utils.clip_grad_norm_``).
"""

from __future__ import annotations

import math

import torch

# clip_grad_norm_'s guard against dividing by a zero norm.
CLIP_EPS = 1e-6


def adamw_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    *,
    step: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One AdamW step on lists of same-device tensors (step counts from 1)."""
    if not params:
        return
    beta1, beta2 = betas
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    step_size = -(lr / bias_correction1)
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denominators, bias_correction2_sqrt)
    torch._foreach_add_(denominators, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denominators, step_size)


def muon_direction(grad: torch.Tensor, momentum_buffer: torch.Tensor, momentum: float, nesterov: bool) -> torch.Tensor:
    """Update the momentum buffer in place and return the matrix to orthogonalize."""
    momentum_buffer.lerp_(grad, 1 - momentum)
    return grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer


def muon_scale(rows: int, cols: int, scaling: str) -> float:
    """The factor on the learning rate for one rows×cols (fan_out × fan_in) orthogonalized update.

    ``match_rms_adamw``: 0.2·√max(A, B) gives the update an RMS of about 0.2, that of a typical AdamW
    update, so AdamW's learning rate and weight decay carry over (Liu et al. 2025, §2.2, eq. 4).
    ``spectral``: √(fan_out/fan_in) makes the update's spectral norm match the RMS→RMS operator norm a
    layer should move by (Yang, Simon & Bernstein 2023, §3; Bernstein & Newhouse 2024).
    """
    if scaling == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if scaling == "spectral":
        return math.sqrt(rows / cols)
    raise ValueError(f"unknown Muon scaling {scaling!r}")


def apply_muon_update(param: torch.Tensor, update: torch.Tensor, *, lr: float, scale: float, weight_decay: float) -> None:
    """θ ← θ·(1 − η·λ) − η·scale·O: decay at the unscaled rate η, the step at η·scale (torch.optim.Muon order)."""
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    param.add_(update.view_as(param), alpha=-lr * scale)


def squared_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Σ‖t‖² over `tensors` as a float32 0-d tensor (0 for an empty list)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    norms = torch._foreach_norm(tensors, 2.0)
    return torch.stack([n.float() for n in norms]).square().sum()


def clip_coefficient(total_norm: float, max_norm: float | None) -> float:
    """The factor clip_grad_norm_ multiplies gradients by (1.0 when no clipping is needed or asked)."""
    if max_norm is None or not math.isfinite(total_norm):
        return 1.0
    return min(1.0, max_norm / (total_norm + CLIP_EPS))
