"""Capture and restore every random-number generator a training process uses, as JSON-safe data.

Resume must reproduce the uninterrupted run bit for bit, so a checkpoint carries, per rank, the states
of torch's CPU generator, the current CUDA device's generator, numpy's global generator and Python's
``random``, whether or not today's code draws from them (a hook or a future layer may).
"""

from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np
import torch


def _encode(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng() -> dict[str, Any]:
    numpy_kind, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": _encode(torch.get_rng_state()),
        "numpy": [numpy_kind, numpy_keys.tolist(), int(numpy_pos), int(numpy_has_gauss), float(numpy_gauss)],
        "python": [python_version, list(python_internal), python_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = _encode(torch.cuda.get_rng_state())
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(_decode(state["torch"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_decode(state["cuda"]))
