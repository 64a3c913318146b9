"""lagoon's inference: a continuous-batching engine with a KV cache and exact sampling logprobs, Laguna's chat
format, an OpenAI-compatible server (``lagoon serve``) and live weight updates for RL.

    from lagoon.infer import Engine, SamplingParams
    engine = Engine.from_checkpoint("path/to/checkpoint")
    [out] = engine.generate("def fib(n):", SamplingParams(max_tokens=64, temperature=0.8, seed=0))
    out.token_ids, out.logprobs, out.text, out.finish_reason

Modules: `engine` (scheduler), `cache` (KV cache), `sampling` (sampler and logprob semantics), `request`
(per-request state), `reference` (no-cache reference path), `tokenizer`, `chat` (Laguna chat format),
`protocol` / `server` (HTTP). Weight updates (routes, broadcast, shared memory, digests) live in `lagoon.weights`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use, so that ``import lagoon.infer`` (and the CLI) stays cheap.
_EXPORTS = {
    "Completion": "lagoon.infer.request",
    "Engine": "lagoon.infer.engine",
    "SamplingParams": "lagoon.infer.sampling",
    "Tokenizer": "lagoon.infer.tokenizer",
    "load_tokenizer": "lagoon.infer.tokenizer",
    "parse_reply": "lagoon.infer.chat",
    "render_chat": "lagoon.infer.chat",
    "WeightGroup": "lagoon.weights.broadcast",
    "broadcast_weights": "lagoon.weights.broadcast",
    "push_weights": "lagoon.weights.broadcast",
    "weights_digest": "lagoon.weights.tensors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lagoon.infer' has no attribute {name!r}")
