"""metrics.jsonl → TensorBoard event files, written with no TensorBoard or TensorFlow installed.

    lagoon report DIR --tensorboard      # also writes DIR/tensorboard/[RUN/]events.out.tfevents.*
    tensorboard --logdir DIR/tensorboard

An event file is a sequence of TFRecords (TensorFlow's ``tensorflow/core/lib/io/record_writer.cc``):
little-endian uint64 length, its masked CRC-32C, the bytes, their masked CRC-32C. Each record is an
``Event`` protocol buffer (``tensorflow/core/util/event.proto``: wall_time = 1 double, step = 2 int64,
file_version = 3 string, summary = 5) whose ``Summary`` (``summary.proto``) holds ``Value``s (tag = 1 string,
simple_value = 2 float). Both are encoded by hand below. The file is rewritten from metrics.jsonl each
time, so it always shows the run's one consistent history (metrics.jsonl is truncated on resume).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

from lagoon.report.runs import Run, load_runs

_CRC32C_POLY = 0x82F63B78   # Castagnoli polynomial, reflected (RFC 3720 §B.4)
_MASK_DELTA = 0xA282EAD8    # TFRecord's CRC mask (record_writer.cc)


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked(crc32c(length))) + data + struct.pack("<I", _masked(crc32c(data)))


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, values: dict[str, float] | None = None, file_version: str | None = None) -> bytes:
    message = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        message += _length_delimited(3, file_version.encode())
    if values:
        summary = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))
            for tag, value in values.items())
        message += _length_delimited(5, summary)
    return message


def write_events(run: Run, directory: Path) -> Path:
    """One event file for `run` in `directory` (previous lagoon event files there are replaced)."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("events.out.tfevents.*.lagoon"):
        old.unlink()
    started = time.time()
    records = [_record(_event(started, 0, file_version="brain.Event:2"))]
    for row in run.metrics:
        if "step" not in row:
            continue
        values = {key: float(value) for key, value in row.items()
                  if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
        wall = started - float(run.metrics[-1].get("elapsed_s", 0)) + float(row.get("elapsed_s", 0))
        records.append(_record(_event(wall, int(row["step"]), values)))
    path = directory / f"events.out.tfevents.{int(started)}.{socket.gethostname()}.lagoon"
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_bytes(b"".join(records))
    staging.replace(path)
    return path


def export_tensorboard(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                       include: list[str] | None = None) -> list[Path]:
    """Event files for the run at `run_dir`, or one sub-directory per run of a directory of runs."""
    root = Path(run_dir)
    target = Path(out) if out is not None else root / "tensorboard"
    return [write_events(run, target if run.name == "." else target / run.name) for run in load_runs(root, include)]
