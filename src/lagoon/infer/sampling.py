"""Sampling parameters and the sampler: the distribution each token is drawn from, and its exact log-probabilities.

Shape legend: B rows (one per running request), V vocabulary, n alternatives in a top-logprobs listing.

The sampling distribution of a row with temperature τ > 0, top-k k and top-p p is built in this order
(the order vLLM and transformers use): logits / τ → keep the k largest (k = 0: all) → softmax → keep the
smallest set of most likely tokens whose probability reaches p (the most likely token always stays;
Holtzman et al. 2019, "nucleus sampling", §3.1) → renormalise. The token is drawn from exactly this
distribution and its log-probability is reported from the same tensor, so a trainer recomputing
log π(token) with the same τ, k, p gets the same number.

τ = 0 is greedy decoding (argmax). Its sampling distribution is a point mass, so the reported log-probability
is the model's own (temperature 1, unfiltered) — the same as ``logprobs_mode = "raw"``, which reports the
model's log-softmax at temperature 1 for every request, e.g. to measure the sampler/trainer mismatch.

Draws use one `torch.Generator` per request, seeded from the request's seed, and the exponential-race
form of categorical sampling (argmax p_i / E_i with E_i ~ Exp(1) is distributed as p; Gumbel 1954).
Each token consumes exactly V draws of the request's own generator, so a seeded request yields the same
tokens alone or batched with any others.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Literal

import torch

from lagoon.tokens import STOP_IDS


@dataclass
class SamplingParams:
    """Per-request generation settings (the OpenAI/vLLM fields of the same names)."""

    max_tokens: int = 16
    """Generate at most this many tokens (the stop token, if one ends generation, counts)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling threshold in (0, 1]; 1 keeps every token."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 (or -1) keeps all."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: generation ends when the text contains one; it is cut from the text."""
    stop_token_ids: list[int] | None = None
    """Token ids that end generation (kept in `token_ids`); None means Laguna's STOP_IDS [2, 24]."""
    ignore_eos: bool = False
    """Never stop on a stop token id (benchmarks)."""
    seed: int | None = None
    """Seed of this request's private generator; None draws a random one."""
    logprobs: int | None = None
    """Also list the n most likely alternatives at every step (the sampled token's logprob is always returned)."""
    logprobs_mode: Literal["sampling", "raw"] = "sampling"
    """"sampling": log-probs under the distribution sampled from; "raw": the model's log-softmax at temperature 1."""
    include_stop_str_in_output: bool = False
    """Keep the matched stop string (or the stop token's text) at the end of the text."""
    skip_special_tokens: bool = True
    return_routed_experts: bool = False
    """Record the experts every MoE layer chose for each token the engine runs (routing replay)."""
    """Leave special tokens out of the decoded text."""

    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1, 0 (off) or a positive integer, got {self.top_k!r}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError(f"logprobs must be between 0 and 20, got {self.logprobs!r}")
        if self.logprobs_mode not in ("sampling", "raw"):
            raise ValueError(f"logprobs_mode must be 'sampling' or 'raw', got {self.logprobs_mode!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop must be a list of non-empty strings")
        if self.stop_token_ids is not None and any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError("stop_token_ids must be a list of non-negative integers")

    @property
    def stop_ids(self) -> frozenset[int]:
        if self.ignore_eos:
            return frozenset()
        return frozenset(STOP_IDS if self.stop_token_ids is None else self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def make_generator(self, device: torch.device) -> torch.Generator | None:
        if self.greedy:
            return None
        seed = self.seed if self.seed is not None else secrets.randbits(63)
        return torch.Generator(device=device).manual_seed(seed)


@dataclass
class SampleResult:
    tokens_B: torch.Tensor
    """[B] sampled token ids."""
    logprobs_B: torch.Tensor
    """[B] fp32 log-probability of each sampled token (see the module docstring for which distribution)."""
    top_ids_Bn: torch.Tensor | None = None
    """[B, n] the n most likely tokens of the same distribution (when any row asked for alternatives)."""
    top_logprobs_Bn: torch.Tensor | None = None


def sampling_logprobs(logits_BV: torch.Tensor, temperature_B: torch.Tensor, top_k_B: torch.Tensor,
                      top_p_B: torch.Tensor) -> torch.Tensor:
    """Log-probabilities [B, V] (fp32) of the sampling distribution; filtered tokens get −inf.

    Rows with temperature 0 are treated as temperature 1 here (their caller takes the argmax).
    """
    logits_BV = logits_BV.float()
    temperature_B = torch.where(temperature_B > 0, temperature_B, torch.ones_like(temperature_B))
    scaled_BV = logits_BV / temperature_B[:, None]
    V = scaled_BV.shape[-1]
    filtered = bool(((top_k_B > 0) & (top_k_B < V)).any() or (top_p_B < 1.0).any())
    if not filtered:
        return torch.log_softmax(scaled_BV, dim=-1)
    sorted_BV, order_BV = scaled_BV.sort(dim=-1, descending=True)
    rank_V = torch.arange(V, device=logits_BV.device)
    k_B = torch.where(top_k_B > 0, top_k_B, torch.full_like(top_k_B, V))
    sorted_BV = sorted_BV.masked_fill(rank_V[None, :] >= k_B[:, None], float("-inf"))
    probs_BV = torch.softmax(sorted_BV, dim=-1)
    mass_before_BV = probs_BV.cumsum(dim=-1) - probs_BV
    # Drop a token once the more likely ones already reach top_p; rank 0 always survives (mass before it is 0).
    drop_BV = (mass_before_BV >= top_p_B[:, None]) & (rank_V[None, :] > 0)
    sorted_BV = sorted_BV.masked_fill(drop_BV, float("-inf"))
    filtered_BV = torch.full_like(scaled_BV, float("-inf")).scatter(-1, order_BV, sorted_BV)
    return torch.log_softmax(filtered_BV, dim=-1)


def sample(logits_BV: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> SampleResult:
    """Draw one token per row under each row's own parameters and generator."""
    B = logits_BV.shape[0]
    device = logits_BV.device
    temperature_B = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device)
    top_k_B = torch.tensor([max(p.top_k, 0) for p in params], dtype=torch.long, device=device)
    top_p_B = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device)
    greedy = [p.greedy for p in params]
    raw_BV = torch.log_softmax(logits_BV.float(), dim=-1)
    if all(greedy):
        sampling_BV = raw_BV
    else:
        sampling_BV = sampling_logprobs(logits_BV, temperature_B, top_k_B, top_p_B)

    tokens_B = raw_BV.argmax(dim=-1)
    if not all(greedy):
        # Exponential race: argmax p / E, E ~ Exp(1) drawn from each request's own generator.
        noise_BV = torch.ones_like(sampling_BV)
        for row, generator in enumerate(generators):
            if not greedy[row]:
                noise_BV[row].exponential_(1.0, generator=generator)
        drawn_B = (sampling_BV.exp() / noise_BV).argmax(dim=-1)
        greedy_B = torch.tensor(greedy, device=device)
        tokens_B = torch.where(greedy_B, tokens_B, drawn_B)

    # Which distribution each row reports: raw for greedy rows and raw mode, else the sampling one.
    use_raw_B = torch.tensor([g or p.logprobs_mode == "raw" for g, p in zip(greedy, params)], device=device)
    reported_BV = torch.where(use_raw_B[:, None], raw_BV, sampling_BV) if not bool(use_raw_B.all()) else raw_BV
    logprobs_B = reported_BV.gather(-1, tokens_B[:, None])[:, 0]
    result = SampleResult(tokens_B=tokens_B, logprobs_B=logprobs_B)
    n = max((p.logprobs or 0) for p in params)
    if n > 0:
        top = reported_BV.topk(min(n, reported_BV.shape[-1]), dim=-1)
        result.top_ids_Bn, result.top_logprobs_Bn = top.indices, top.values
    assert result.tokens_B.shape == (B,)
    return result
