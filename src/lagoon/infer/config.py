"""The ``[serve]`` config section: how ``lagoon serve`` runs the engine and the OpenAI-compatible server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lagoon.errors import check


@dataclass
class ServeConfig:
    """Settings of ``lagoon serve`` (every one can also be given on the command line)."""

    host: str = "127.0.0.1"
    """Interface to listen on; 0.0.0.0 for every interface."""
    port: int = 8000
    """TCP port (0 picks a free one and prints it)."""
    max_batch: int = 32
    """Most requests decoded together (rows of the KV cache)."""
    max_model_len: int | None = None
    """Longest prompt + completion in tokens; None uses the model's max_position_embeddings."""
    max_prefill_tokens: int = 8192
    """Padded prompt tokens admitted in one prefill step (bounds the step's memory and latency)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and activations dtype; "auto" keeps the checkpoint's."""
    device: str = "cpu"
    """Torch device, e.g. "cpu" or "cuda:0"."""
    served_model_name: str | None = None
    """The model id clients send and /v1/models lists; None uses the checkpoint directory's name."""
    policy_version: int = 0
    """Policy version of the weights the server starts with (RL weight updates raise it)."""
    threads: int | None = None
    """Torch CPU threads; None keeps torch's default (one per core)."""
    max_logprobs: int = 20
    """Largest number of alternatives a request may ask for per token."""
    weight_transfer_timeout_s: float = 300.0
    """How long a weight broadcast may wait for the trainer before failing."""

    def validate(self) -> None:
        check(0 <= self.port <= 65535, "port", f"must be in 0..65535, got {self.port}")
        check(self.max_batch >= 1, "max_batch", f"must be at least 1, got {self.max_batch}")
        check(self.max_model_len is None or self.max_model_len >= 2, "max_model_len", "must be at least 2")
        check(self.max_prefill_tokens >= 1, "max_prefill_tokens", "must be at least 1")
        check(self.threads is None or self.threads >= 1, "threads", "must be at least 1")
        check(0 <= self.max_logprobs <= 100, "max_logprobs", "must be in 0..100")
        check(self.weight_transfer_timeout_s > 0, "weight_transfer_timeout_s", "must be positive")
        check(bool(self.host), "host", "must not be empty")
