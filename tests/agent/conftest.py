"""Helpers for the agent tests: small sandbox limits and host process inspection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lagoon.agent.config import SandboxConfig


def processes_with(*argv: str) -> list[int]:
    """Host pids whose command line is exactly `argv`."""
    wanted = "\0".join(argv).encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline == wanted:
            found.append(int(entry))
    return found


@pytest.fixture
def small_limits() -> SandboxConfig:
    return SandboxConfig(wall_timeout_s=20, cpu_seconds=5, memory_mb=512, max_processes=32, max_file_mb=16,
                         tmp_size_mb=16, output_head_chars=400, output_tail_chars=400)
