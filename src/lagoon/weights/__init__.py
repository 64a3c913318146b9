"""The one place that names, orders, digests and moves a Laguna's weights.

    tensors        the fixed order (sorted runtime names, tied head out), runtime <-> Hugging Face hub names,
                   the streaming layout check and the SHA-256 digest every side computes alike
    publish        `WeightPublisher`: versions of the trainer's weights into the store (RUN_DIR/weights) and
                   into the rollout engines; ``publish(model or (name, tensor) stream, version, tokenizer_dir)``
    lagoon engine: lagoon_server (the ``/v1/weights/*`` routes of `lagoon serve`), broadcast (torch.distributed
                   buckets into running servers), shared_memory (a /dev/shm segment the servers copy from)
    vLLM engine:   vllm (vLLM's native RL weight-sync protocol: pause, start, packed update, finish, resume;
                   NCCL, or gloo through lagoon's vLLM plugin) and probe (the check after every update)

Targets are chosen by ``rl.servers.engine`` ("lagoon" | "vllm"); the store and the order are shared.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "WeightPublisher": "lagoon.weights.publish",
    "read_latest": "lagoon.weights.publish",
    "store_root": "lagoon.weights.publish",
    "segment_root": "lagoon.weights.publish",
    "weights_digest": "lagoon.weights.tensors",
    "ordered_tensors": "lagoon.weights.tensors",
    "expected_layout": "lagoon.weights.tensors",
    "push_weights": "lagoon.weights.broadcast",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lagoon.weights' has no attribute {name!r}")
