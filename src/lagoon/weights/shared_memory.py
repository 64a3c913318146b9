"""Weights through shared memory: the trainer writes each tensor's bytes once into a mapped segment, a server
on the same machine maps the segment and copies them straight into its parameters.

One update is therefore two memory copies (trainer → segment, segment → served parameters) plus one HTTP
round trip: no serialization, no file parsing, no renaming of expert layouts, and no hashing on the
critical path. The two copies can overlap: a server asked to wait (``wait_s``) copies each tensor as soon as
the writer's progress counter has passed it, so an update costs about one copy's time when the two
processes have a core each. The files/safetensors path costs several more copies and a SHA-256 pass, the gloo broadcast
two more copies through the kernel's socket buffers (docs/LOG.md, 2026-11-29).

Segment file (``/dev/shm/...``, one per slot; a store alternates between two slots, so a version can be
written while servers may still read the previous one):

    offset 0         preamble, 64 bytes, little-endian: magic ``LAGOONSW``, u32 layout version (1),
                     u32 reserved, i64 policy version (-1 while being written), i64 index length,
                     i64 data offset, i64 data bytes, i64 version being written (-2: abandoned),
                     i64 bytes of the data region written so far for it (in index order)
    offset 64        the index, UTF-8 JSON: ``{"tensors": [[name, dtype, shape, offset, nbytes], ...]}`` in
                     `lagoon.weights.tensors.ordered_tensors` order (sorted runtime names, a tied head left out)
    data offset      the tensors' raw bytes, each at a 64-byte aligned offset (relative to the data offset),
                     the data offset itself 4096-aligned

Versioning works like a seqlock: the writer zeroes the progress counter, sets the version field to -1 and
the version-being-written field to v, writes the bytes (advancing the counter after each tensor), then
writes v into the version field. A reader copies a tensor only once the version field is v or the writer
is writing v past that tensor, and accepts the update only if the version field is v after its last copy:
versions only grow, so any lap by the writer (which the two slots make impossible unless a reader is two
versions late) leaves it at -1 or above v. x86's store order makes the fields' order the order seen by
the reader; every field is an aligned 8-byte word.

Shape legend: none (tensors are handled as flat byte ranges).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lagoon.errors import LagoonError
from lagoon.weights.tensors import WeightSource, layout_problem, ordered_tensors

MAGIC = b"LAGOONSW"
LAYOUT_VERSION = 1
PREAMBLE = struct.Struct("<8sII6q")
assert PREAMBLE.size == 64
VERSION_OFFSET = 16                      # the i64 policy-version field inside the preamble
WRITING_OFFSET = 48                      # the i64 version-being-written field
WRITTEN_OFFSET = 56                      # the i64 bytes-written-so-far field
WRITING = -1
ABANDONED = -2
POLL_S = 2e-4                            # a waiting reader's poll interval (one tensor is usually longer)
TENSOR_ALIGN = 64                        # cache-line alignment; also satisfies every dtype's view alignment
DATA_ALIGN = 4096                        # page alignment of the data region


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    """Byte offset from the start of the data region."""
    nbytes: int


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise LagoonError(f"unknown dtype {name!r} in the shared weight segment")
    return dtype


def layout(tensors: list[tuple[str, torch.Tensor]]) -> tuple[list[Entry], bytes, int, int]:
    """(entries, index JSON, data offset, data bytes) of a segment holding `tensors`."""
    entries, offset = [], 0
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        entries.append(Entry(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), offset, nbytes))
        offset = _align(offset + nbytes, TENSOR_ALIGN)
    index = json.dumps({"tensors": [[e.name, e.dtype, list(e.shape), e.offset, e.nbytes] for e in entries]}).encode()
    return entries, index, _align(PREAMBLE.size + len(index), DATA_ALIGN), offset


class _Mapping:
    """A whole file mapped shared, as a flat uint8 tensor over the same memory."""

    def __init__(self, path: Path, writable: bool, size: int | None = None):
        flags = os.O_RDWR | (os.O_CREAT if size is not None else 0) if writable else os.O_RDONLY
        fd = os.open(path, flags, 0o600)
        try:
            if size is not None:
                os.ftruncate(fd, size)
                try:
                    # Reserve the pages now: writing through a mapping into a full tmpfs kills the process
                    # with SIGBUS, while posix_fallocate fails with ENOSPC.
                    if hasattr(os, "posix_fallocate"):
                        os.posix_fallocate(fd, 0, size)
                except OSError as error:
                    os.close(fd)
                    fd = -1
                    path.unlink(missing_ok=True)
                    raise LagoonError(f"cannot reserve {size / 2**20:,.0f} MiB for shared weights at {path}: "
                                      f"{error.strerror}") from None
            stat = os.fstat(fd)
            self.identity = (stat.st_ino, stat.st_size)
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            # MAP_POPULATE faults every page in now, once, instead of during each copy.
            self.map = mmap.mmap(fd, stat.st_size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=prot)
        finally:
            if fd >= 0:
                os.close(fd)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # torch warns that a read-only buffer is not writable; we only read it
            self.bytes = torch.frombuffer(self.map, dtype=torch.uint8)

    def version(self) -> int:
        return self.field(VERSION_OFFSET)

    def field(self, offset: int) -> int:
        return struct.unpack_from("<q", self.map, offset)[0]

    def set(self, offset: int, value: int) -> None:
        struct.pack_into("<q", self.map, offset, value)

    def close(self) -> None:
        self.bytes = None
        try:
            self.map.close()
        except BufferError:   # a view is still referenced somewhere; the mapping goes when it does
            pass


def _view(mapping: _Mapping, data_offset: int, entry: Entry, dtype: torch.dtype) -> torch.Tensor:
    start = data_offset + entry.offset
    return mapping.bytes[start:start + entry.nbytes].view(dtype)


# ----------------------------------------------------------------------------------------------------
# Trainer side


@dataclass
class SharedWrite:
    path: Path
    version: int
    num_bytes: int
    seconds: float


class SharedWeightWriter:
    """The trainer's side: `slots` segment files under `root`, written in turn (version v goes to slot v mod slots)."""

    def __init__(self, root: str | Path, slots: int = 2):
        assert slots >= 2, "two slots keep the version servers may still be reading intact"
        self.root = Path(root)
        self.slots = slots
        self._maps: dict[int, _Mapping] = {}
        self._layout: tuple | None = None

    def path(self, slot: int) -> Path:
        return self.root / f"slot-{slot}.bin"

    def streamable(self, source: WeightSource) -> bool:
        """Whether the next `write` of `source` reuses mapped files, so servers may open the slot and wait
        for it before the write starts."""
        signature = [(name, t.dtype, tuple(t.shape)) for name, t in ordered_tensors(source)]
        return self._layout is not None and self._layout[0] == signature and len(self._maps) == self.slots

    def write(self, source: WeightSource, version: int) -> SharedWrite:
        """Copy every weight of `source` into the slot of `version`; returns where and how long it took."""
        assert version >= 0
        started = time.perf_counter()
        tensors = list(ordered_tensors(source))
        signature = [(name, t.dtype, tuple(t.shape)) for name, t in tensors]
        if self._layout is None or self._layout[0] != signature:
            # A new layout gets new files (new inodes), so readers holding the old mapping notice.
            self.close()
            for slot in range(self.slots):
                self.path(slot).unlink(missing_ok=True)
            self._layout = (signature, *layout(tensors))
        _, entries, index, data_offset, data_bytes = self._layout
        if not self._maps:
            # Every slot at once (space reserved, index written, nothing yet to read), so that from the second
            # update on servers can open the next slot before it is written.
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                for slot in range(self.slots):
                    mapping = self._maps[slot] = _Mapping(self.path(slot), writable=True,
                                                          size=data_offset + data_bytes)
                    PREAMBLE.pack_into(mapping.map, 0, MAGIC, LAYOUT_VERSION, 0, WRITING, len(index), data_offset,
                                       data_bytes, WRITING, 0)
                    mapping.map[PREAMBLE.size:PREAMBLE.size + len(index)] = index
            except LagoonError:   # no room: leave no slot behind, and start over at the next write
                self.remove()
                raise
        mapping = self._maps[version % self.slots]
        # Order matters (module docstring): a reader that sees `version` being written sees the zeroed counter.
        mapping.set(WRITTEN_OFFSET, 0)
        mapping.set(VERSION_OFFSET, WRITING)
        mapping.set(WRITING_OFFSET, version)
        try:
            with torch.no_grad():
                for entry, (_, tensor) in zip(entries, tensors):
                    _view(mapping, data_offset, entry, tensor.dtype).copy_(tensor.reshape(-1))
                    mapping.set(WRITTEN_OFFSET, entry.offset + entry.nbytes)
        except BaseException:
            mapping.set(WRITING_OFFSET, ABANDONED)   # readers waiting for this version give up now
            raise
        mapping.set(VERSION_OFFSET, version)
        return SharedWrite(self.path(version % self.slots), version, data_bytes, time.perf_counter() - started)

    def close(self) -> None:
        """Unmap the slots (the files stay, for servers that still read them)."""
        for mapping in self._maps.values():
            mapping.close()
        self._maps = {}

    def remove(self) -> None:
        """Unmap and delete the slot files and `root` (servers holding a mapping keep it until they let go)."""
        self.close()
        self._layout = None
        for slot in range(self.slots):
            self.path(slot).unlink(missing_ok=True)
        try:
            self.root.rmdir()
        except OSError:   # absent, or holding someone else's files
            pass


# ----------------------------------------------------------------------------------------------------
# Server side


@dataclass
class SharedSegment:
    """A mapped segment as a reader sees it."""

    path: Path
    mapping: _Mapping
    entries: list[Entry]
    data_offset: int

    @classmethod
    def open(cls, path: str | Path) -> "SharedSegment":
        path = Path(path)
        if not path.is_file():
            raise LagoonError(f"shared weight segment {path} does not exist (is the trainer on this machine?)")
        try:
            if path.stat().st_size < PREAMBLE.size:
                raise LagoonError(f"{path} is not a lagoon shared weight segment (too short)")
            mapping = _Mapping(path, writable=False)
        except OSError as error:
            raise LagoonError(f"cannot map shared weight segment {path}: {error.strerror}") from None
        try:
            magic, layout_version, _, _, index_len, data_offset, data_bytes, _, _ = PREAMBLE.unpack_from(mapping.map, 0)
            if magic != MAGIC:
                raise LagoonError(f"{path} is not a lagoon shared weight segment (bad magic)")
            if layout_version != LAYOUT_VERSION:
                raise LagoonError(f"{path} has segment layout {layout_version}; this server reads {LAYOUT_VERSION}")
            if data_offset + data_bytes > len(mapping.map) or PREAMBLE.size + index_len > data_offset:
                raise LagoonError(f"{path} is truncated or its preamble is corrupt")
            index = json.loads(bytes(mapping.map[PREAMBLE.size:PREAMBLE.size + index_len]).decode())
            entries = [Entry(n, d, tuple(s), o, b) for n, d, s, o, b in index["tensors"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError):
            mapping.close()
            raise LagoonError(f"{path}: the shared weight segment's index is corrupt") from None
        except LagoonError:
            mapping.close()
            raise
        for entry in entries:
            try:
                expected = _numel(entry.shape) * _dtype(entry.dtype).itemsize
            except LagoonError:
                mapping.close()
                raise
            if entry.nbytes != expected or entry.offset + entry.nbytes > data_bytes or entry.offset % TENSOR_ALIGN:
                mapping.close()
                raise LagoonError(f"{path}: index entry {entry.name} does not fit the segment")
        return cls(path, mapping, entries, data_offset)

    def still_current(self) -> bool:
        """The file on disk is the one mapped (not replaced by a store with another layout)."""
        try:
            stat = self.path.stat()
        except OSError:
            return False
        return (stat.st_ino, stat.st_size) == self.mapping.identity

    def problem(self, model: nn.Module) -> str | None:
        """Why this segment's tensors cannot go into `model` (None if they can)."""
        return layout_problem({e.name: e.shape for e in self.entries}, model)

    def wait_for(self, version: int, end: int, wait_s: float = 0.0) -> None:
        """Return once the data region's first `end` bytes hold `version` (any `end` past the data: once the
        whole version is written); raise a one-line LagoonError if the writer lapped this reader, gave up, or
        has not got there within `wait_s` seconds."""
        deadline = time.monotonic() + wait_s
        while True:
            done = self.mapping.field(VERSION_OFFSET)
            if done == version:
                return
            writing = self.mapping.field(WRITING_OFFSET)
            if writing == version and self.mapping.field(WRITTEN_OFFSET) >= end:
                return
            if done > version or writing > version:
                raise LagoonError(f"{self.path} was rewritten while it was being read (the trainer is more than "
                                  f"one version ahead of this server, at {max(done, writing)}); the weights are "
                                  "incomplete")
            if writing == ABANDONED:
                raise LagoonError(f"the trainer abandoned writing version {version} to {self.path}")
            if time.monotonic() >= deadline:
                if wait_s <= 0:
                    raise LagoonError(f"{self.path} holds version {done}, not {version} (-1: being written)")
                raise LagoonError(f"version {version} did not arrive in {self.path} within {wait_s:g} s "
                                  f"(it holds {done}, and {writing} is being written)")
            time.sleep(POLL_S)

    def copy_into(self, model: WeightSource, version: int, wait_s: float = 0.0) -> int:
        """Copy every tensor into `model` (casting to its dtypes), each as soon as the writer has written it
        (waiting up to `wait_s` for the writer); raises if the writer changed the slot meanwhile. Returns the
        bytes read."""
        self.wait_for(version, 0, wait_s)
        targets = dict(ordered_tensors(model))
        total = 0
        with torch.no_grad():
            for entry in self.entries:
                self.wait_for(version, entry.offset + entry.nbytes, wait_s)
                source = _view(self.mapping, self.data_offset, entry, _dtype(entry.dtype))
                targets[entry.name].copy_(source.view(entry.shape))
                total += entry.nbytes
        # The seqlock's closing check: still (or by now) exactly `version`, never lapped.
        self.wait_for(version, sys.maxsize, wait_s)
        return total

    def close(self) -> None:
        self.mapping.close()


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


class SegmentCache:
    """A server's mapped segments by path, re-opened when the file on disk changes."""

    def __init__(self):
        self._segments: dict[Path, SharedSegment] = {}

    def get(self, path: str | Path) -> SharedSegment:
        path = Path(path)
        for stale in [p for p, s in self._segments.items() if not s.still_current()]:
            # Deleted or replaced files: unmapping lets tmpfs free their pages.
            self._segments.pop(stale).close()
        segment = self._segments.get(path)
        if segment is None:
            segment = self._segments[path] = SharedSegment.open(path)
        return segment

    def close(self) -> None:
        for segment in self._segments.values():
            segment.close()
        self._segments = {}
