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


def train_test_tokenizer(directory: Path, vocab_size: int = 640) -> Path:
    """A real lagoon byte-level BPE tokenizer, trained in a second on agent transcripts and code."""
    from lagoon.agent.arith import supervised_examples
    from lagoon.agent.tasks import builtin_dir
    from lagoon.data.chat import render_chat
    from lagoon.data.tokenizer import save_tokenizer, train_tokenizer

    texts = []
    for level in (1, 2, 3, 4):
        texts += [render_chat(example["messages"]) for example in supervised_examples(60, level=level, seed=99)]
    texts += [path.read_text() for path in sorted(builtin_dir("pybugs").rglob("*.py"))]
    return save_tokenizer(train_tokenizer(texts, vocab_size=vocab_size), directory)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_test_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from lagoon.infer.tokenizer import Tokenizer

    return Tokenizer.from_dir(tokenizer_dir)
