"""Worker-process tasks of the build and the helpers that feed them in order.

The build runs on a `ProcessPoolExecutor` started with "spawn" (a fork after tokenizers' Rust threads
have started can deadlock). Results always come back in submission order, so the build is
deterministic whatever the number of workers.

Ctrl-C: the terminal sends SIGINT to every process of the foreground group, workers included. Workers
ignore it from the moment they are started (`worker_pool`), so only the build itself stops — one line,
exit 130 — and it cancels the queued tasks instead of waiting for them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing.context import SpawnContext, SpawnProcess
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
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent handles Ctrl-C (already ignored since exec)


class _UninterruptibleProcess(SpawnProcess):
    """A spawned worker that starts with SIGINT ignored: an ignored signal stays ignored across exec, and
    Python then installs no KeyboardInterrupt handler, so a Ctrl-C even while the worker is still importing
    prints nothing."""

    def start(self) -> None:
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            return super().start()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            super().start()
        finally:
            signal.signal(signal.SIGINT, previous)


class _SpawnContext(SpawnContext):
    Process = _UninterruptibleProcess


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """The build's process pool; on any exception (Ctrl-C included) queued tasks are cancelled and the workers
    stopped, so the build ends at once instead of finishing the queue."""
    pool = ProcessPoolExecutor(workers, mp_context=_SpawnContext(), initializer=worker_init)
    try:
        yield pool
    except BaseException:
        processes = list(getattr(pool, "_processes", {}).values())  # CPython's worker handles
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=30)
        raise
    else:
        pool.shutdown(wait=True)


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

    def task(self, description: str, total: int | None) -> "ProgressTask":
        return ProgressTask(self.progress, self.progress.add_task(description, total=total))


class ProgressTask:
    """One bar: call it to advance; `finish` makes the total what was actually done (a stage whose size is
    only an estimate, like a synthetic generator's byte budget, then still ends at exactly 100%)."""

    def __init__(self, progress, task_id):
        self.progress, self.task_id = progress, task_id

    def __call__(self, advance: int = 1) -> None:
        self.progress.update(self.task_id, advance=advance)

    def finish(self) -> None:
        task = self.progress.tasks[[t.id for t in self.progress.tasks].index(self.task_id)]
        self.progress.update(self.task_id, total=task.completed)

    @property
    def state(self) -> tuple[float, float | None]:
        """(completed, total)."""
        task = self.progress.tasks[[t.id for t in self.progress.tasks].index(self.task_id)]
        return task.completed, task.total
