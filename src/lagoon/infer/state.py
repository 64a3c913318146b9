"""What the HTTP handlers share: the engine, the served model's name, and the record of weight updates."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lagoon.infer.config import ServeConfig
from lagoon.infer.engine import Engine
from lagoon.infer.tokenizer import TextCodec


@dataclass
class ServerState:
    engine: Engine
    model_name: str
    config: ServeConfig
    checkpoint: Path | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    weights_lock: threading.Lock = field(default_factory=threading.Lock)
    """Held for the whole of one weight operation (load, receive); a second one meanwhile gets 409."""
    last_update: dict[str, Any] | None = None
    """How the current weights arrived: source, version, bytes, seconds, GB/s."""
    segments: Any = None
    """Mapped shared-memory weight segments (`lagoon.weights.shared_memory.SegmentCache`), made on first use."""
    _digest: tuple[int, str] | None = None

    @property
    def tokenizer(self) -> TextCodec | None:
        return self.engine.tokenizer

    def digest(self) -> str:
        """The served weights' SHA-256 (`lagoon.weights.tensors.weights_digest`), cached per version."""
        from lagoon.weights.tensors import weights_digest

        version = self.engine.policy_version
        if self._digest is None or self._digest[0] != version or not self.engine.weights_complete:
            self._digest = (version, weights_digest(self.engine.model))
        return self._digest[1]

    def forget_digest(self) -> None:
        self._digest = None
