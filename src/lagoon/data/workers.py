"""Worker-process tasks of the build and the helpers that feed them in order.

The build runs on a `ProcessPoolExecutor` started with "spawn" (a fork after tokenizers' Rust threads
have started can deadlock). Results always come back in submission order, so the build is
deterministic whatever the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np

from lagoon.data.config import DataConfig
from lagoon.data.curate import analyze
from lagoon.data.sources import Document, read_source

CHUNK_BYTES = 1 << 20


def worker_init() -> None:
    # Each worker tokenizes its own chunk; one Rust thread per process avoids oversubscribing the cores.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def read_task(source, scale: float) -> list[Document]:
    return read_source(source, scale)


def analyze_task(pairs: list[tuple[str, str]], config: DataConfig):
    return analyze(pairs, config)


def exercise_task(seeds: list[Document], domain: str) -> list[Document]:
    from lagoon.data.synthetic import code_exercises

    return [document for seed in seeds for document in code_exercises(seed, domain)]


_TOKENIZERS: dict[str, Any] = {}


def tokenize_task(tokenizer_path: str, texts: list[str], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    from lagoon.data.tokenizer import encode_documents, load_tokenizer

    if tokenizer_path not in _TOKENIZERS:
        _TOKENIZERS[tokenizer_path] = load_tokenizer(tokenizer_path)
    return encode_documents(_TOKENIZERS[tokenizer_path], texts, np.dtype(dtype))


def ordered(pool: ProcessPoolExecutor, function: Callable, items: Iterable[tuple], window: int) -> Iterator[Any]:
    """Results of ``function(*item)`` in order, keeping at most `window` tasks in flight (stoppable)."""
    pending: list[Future] = []
    iterator = iter(items)
    for item in iterator:
        pending.append(pool.submit(function, *item))
        if len(pending) >= window:
            yield pending.pop(0).result()
    while pending:
        yield pending.pop(0).result()


def chunks(documents: list[Document], max_bytes: int = CHUNK_BYTES) -> Iterator[list[Document]]:
    chunk, size = [], 0
    for document in documents:
        chunk.append(document)
        size += len(document.text)
        if size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class Progress:
    """rich progress bars, or nothing when quiet."""

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), disable=quiet, transient=False)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def task(self, description: str, total: int | None):
        task = self.progress.add_task(description, total=total)
        return lambda advance=1: self.progress.update(task, advance=advance)
