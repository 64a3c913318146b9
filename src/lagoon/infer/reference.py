"""The reference path of the engine: generation by full recomputation, one sequence at a time, no KV cache.

Every step runs the model over the whole sequence so far and samples from the last position with the
same sampler and the same per-request generator as the engine. The engine's cached, batched path must
reproduce it token for token (tests) and is measured against it (benchmarks/infer_kv_cache.py).
"""

from __future__ import annotations

import torch

from lagoon.infer.request import Completion, Request
from lagoon.infer.sampling import SamplingParams, sample
from lagoon.infer.tokenizer import TextCodec
from lagoon.model.transformer import LagunaForCausalLM


@torch.no_grad()
def generate_without_cache(model: LagunaForCausalLM, prompt_ids: list[int], params: SamplingParams,
                           tokenizer: TextCodec | None = None, policy_version: int = 0) -> Completion:
    """Generate for one prompt by recomputing every position at every step."""
    params.validate()
    device = next(model.parameters()).device
    request = Request(prompt_ids, params, tokenizer, device)
    while not request.finished:
        input_ids_1T = torch.tensor([request.sequence()], device=device)
        logits_V = model(input_ids_1T).logits[:, -1]
        result = sample(logits_V, [params], [request.generator])
        top = None
        if params.logprobs:
            top = list(zip(result.top_ids_Bn[0].tolist(), result.top_logprobs_Bn[0].tolist()))
        request.accept(int(result.tokens_B[0]), float(result.logprobs_B[0]), top, policy_version)
    return request.completion()
