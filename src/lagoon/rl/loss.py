"""The CISPO policy loss and the fp32 token log-probabilities it needs.

CISPO (MiniMax-M1, arXiv:2506.13585, §3.1, eq. 4–5) clips the importance-sampling weight instead of the
update: every sampled token keeps its gradient through log π, the weight only bounds how much it counts.

    r_t   = π_θ(y_t | ·) / μ(y_t | ·)                 μ: the sampler's (inference server's) probability
    r̂_t   = clip(r_t, 1 − ε_low, 1 + ε_high)
    J     = 1/N · Σ_t sg(r̂_t) · Â_t · log π_θ(y_t | ·)  N: sampled tokens of the whole step (token-level mean)
    loss  = −J

MiniMax-M1 sets no lower bound (ε_low large); lagoon's default ε_low = 1 (weights ≥ 0) reproduces that.
There is no entropy bonus and no KL penalty to a reference model.

μ is the probability the *sampler* reported for the token it drew, so r_t also absorbs the numerical
mismatch between the inference engine and the trainer, and the staleness of an asynchronous sample.
Both are logged: `mismatch_kl` estimates KL(μ ‖ π_θ) with the k3 estimator E_μ[r − 1 − log r]
(Schulman 2020, "Approximating KL divergence"), which is non-negative and unbiased for samples from μ.

Shape legend: B sequences, T positions, D model width, V vocabulary, N flattened token positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lagoon.model import LagunaForCausalLM


def fp32_logprobs(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor,
                  chunk_tokens: int = 1024) -> torch.Tensor:
    """log softmax(h·Wᵀ)[target] with the LM head in fp32, `chunk_tokens` positions at a time.

    Computing the head in fp32 keeps the trainer's log π comparable to the sampler's: a bf16 head
    rounds logits by up to ~0.4% of their magnitude, which alone shows up as train–inference mismatch
    (MiniMax-M1 §3.2 traced its training instability to exactly this). Chunking bounds the fp32
    [N, V] logits a step holds at once.
    """
    weight_fp32_VD = weight_VD.float()
    out = []
    for start in range(0, hidden_ND.shape[0], chunk_tokens):
        logits_nV = hidden_ND[start:start + chunk_tokens].float() @ weight_fp32_VD.T
        out.append(torch.log_softmax(logits_nV, dim=-1).gather(1, targets_N[start:start + chunk_tokens, None])[:, 0])
    return torch.cat(out) if out else hidden_ND.new_zeros(0, dtype=torch.float32)


def fp32_logprobs_reference(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
    """The unchunked form of `fp32_logprobs` (the reference its tests compare against)."""
    logits_NV = F.linear(hidden_ND.float(), weight_VD.float())
    return -F.cross_entropy(logits_NV, targets_N, reduction="none")


def sequence_logprobs(model: LagunaForCausalLM, input_ids_BT: torch.Tensor, document_ids_BT: torch.Tensor | None,
                      chunk_tokens: int = 1024, call: torch.nn.Module | None = None) -> torch.Tensor:
    """[B, T] fp32 log π of each next token (position t scores token t+1; the last column is 0). `call` is the
    module the forward goes through when it is not `model` itself (a DDP wrapper)."""
    hidden_BTD = (call or model)(input_ids_BT, document_ids=document_ids_BT, return_logits=False,
                       return_hidden_states=True).hidden_states
    B, T, D = hidden_BTD.shape
    targets_BT = torch.zeros_like(input_ids_BT)
    targets_BT[:, :-1] = input_ids_BT[:, 1:]
    logprobs_N = fp32_logprobs(hidden_BTD.reshape(B * T, D), model.lm_head.weight, targets_BT.reshape(-1), chunk_tokens)
    logprobs_BT = logprobs_N.view(B, T).clone()
    logprobs_BT[:, -1] = 0.0
    return logprobs_BT


@dataclass
class CispoStats:
    """Sums over the loss tokens of one micro-batch (divide by `tokens` for means)."""

    tokens: float
    clipped_high: float
    """Tokens whose IS weight was capped at 1 + ε_high."""
    clipped_low: float
    """Tokens whose IS weight was raised to 1 − ε_low."""
    mismatch_kl: float
    """Σ k3 = Σ (r − 1 − log r): KL(μ ‖ π) times tokens."""
    log_ratio: float
    """Σ log(π/μ)."""
    ratio_max: float

    def add(self, other: "CispoStats") -> "CispoStats":
        return CispoStats(self.tokens + other.tokens, self.clipped_high + other.clipped_high,
                          self.clipped_low + other.clipped_low, self.mismatch_kl + other.mismatch_kl,
                          self.log_ratio + other.log_ratio, max(self.ratio_max, other.ratio_max))


def cispo_loss(logprobs_N: torch.Tensor, sampler_logprobs_N: torch.Tensor, advantages_N: torch.Tensor,
               mask_N: torch.Tensor, num_tokens: float, epsilon_high: float, epsilon_low: float = 1.0,
               ) -> tuple[torch.Tensor, CispoStats]:
    """CISPO's −J for one micro-batch (any shape; all inputs alike), normalized by the step's `num_tokens`.

    `logprobs_N` carries the gradient; the IS weight is computed from a detached copy. Summing the
    returned losses of all micro-batches of a step gives the token-level mean over the whole step.
    """
    mask = mask_N.to(logprobs_N.dtype)
    log_ratio = (logprobs_N.detach() - sampler_logprobs_N) * mask
    ratio = torch.exp(log_ratio)
    weight = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high)
    loss = -(weight * advantages_N * logprobs_N * mask).sum() / num_tokens
    with torch.no_grad():
        stats = CispoStats(
            tokens=float(mask.sum()),
            clipped_high=float(((ratio > 1.0 + epsilon_high).to(mask.dtype) * mask).sum()),
            clipped_low=float(((ratio < 1.0 - epsilon_low).to(mask.dtype) * mask).sum()),
            mismatch_kl=float(((ratio - 1.0 - log_ratio) * mask).sum()),
            log_ratio=float(log_ratio.sum()),
            ratio_max=float(ratio[mask.bool()].max()) if mask.any() else 0.0,
        )
    return loss, stats
