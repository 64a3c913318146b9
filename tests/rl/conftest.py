"""RL tests run several processes at once (trainer, servers, actors, sandboxes) on a small machine: one
torch thread each keeps them from oversubscribing the cores."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")      # inherited by the subprocesses the tests start


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
