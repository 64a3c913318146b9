"""lagoon's inference: a continuous-batching engine with a KV cache and exact sampling logprobs, Laguna's chat
format, an OpenAI-compatible server (``lagoon serve``) and live weight updates for RL.

    from lagoon.infer import Engine, SamplingParams
    engine = Engine.from_checkpoint("path/to/checkpoint")
    [out] = engine.generate("def fib(n):", SamplingParams(max_tokens=64, temperature=0.8, seed=0))
    out.token_ids, out.logprobs, out.text, out.finish_reason

Modules: `engine` (scheduler), `cache` (KV cache), `sampling` (sampler and logprob semantics), `request`
(per-request state), `reference` (no-cache reference path), `tokenizer`, `chat` (Laguna chat format),
`protocol` / `server` / `weights_api` (HTTP), `weight_sync` (trainer → server broadcast and digests).
"""

from lagoon.infer.chat import parse_reply, render_chat
from lagoon.infer.engine import Engine
from lagoon.infer.request import Completion
from lagoon.infer.sampling import SamplingParams
from lagoon.infer.tokenizer import Tokenizer, load_tokenizer
from lagoon.infer.weight_sync import WeightGroup, broadcast_weights, push_weights, weights_digest

__all__ = [
    "Completion", "Engine", "SamplingParams", "Tokenizer", "WeightGroup", "broadcast_weights", "load_tokenizer",
    "parse_reply", "push_weights", "render_chat", "weights_digest",
]
