"""lagoon.data: sources → curation → tokenizer → token shards per leaf → mixture loader.

Public API (see docs/INTERFACES.md):

- `ShardSet.open(dir, expected_tokenizer_hash=None)` — a verified shard set (`lagoon.data.shards`)
- `Mixture` — weights over leaves, with its file format (`lagoon.data.mixture`)
- `MixtureLoader`, `Batch` — packed, rank-aware, resumable training batches (`lagoon.data.loader`)
- `EvalSet` — held-out tokens per capability group and the bits-per-byte definition (`lagoon.data.evalset`)
- `build(config, out_dir)` — the pipeline (`lagoon.data.build`); `train_tokenizer`, `save_tokenizer`,
  `load_tokenizer` (`lagoon.data.tokenizer`)

Names are imported lazily so that ``import lagoon.data`` stays cheap (no torch until the loader is used).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ShardSet": "lagoon.data.shards",
    "TokenStream": "lagoon.data.shards",
    "Mixture": "lagoon.data.mixture",
    "MixtureLoader": "lagoon.data.loader",
    "Batch": "lagoon.data.loader",
    "EvalSet": "lagoon.data.evalset",
    "DataConfig": "lagoon.data.config",
    "build": "lagoon.data.build",
    "embedded_config": "lagoon.data.build",
    "train_tokenizer": "lagoon.data.tokenizer",
    "save_tokenizer": "lagoon.data.tokenizer",
    "load_tokenizer": "lagoon.data.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lagoon.data' has no attribute {name!r}")
