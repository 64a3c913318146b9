"""The CPU fingerprint kernel (``native/fingerprint.c``), built with the system C compiler on first use.

The shared library is cached under ``$LAGOON_CACHE_DIR`` (default ``~/.cache/lagoon``) in a file named
by a hash of the source, the compiler flags and this CPU's model and flags — it is built with
``-march=native``, so a node with a different CPU builds its own. Building takes well under a second;
concurrent builders (several ranks) each write a private file and rename it into place. Without a C
compiler `available()` is False and `lagoon.sdc.fingerprint` uses its torch kernel instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lagoon.sdc.fingerprint import MAX_LANES, ROW_WORDS, SEED, col_weights_table, row_keys_table

SOURCE = Path(__file__).with_name("native") / "fingerprint.c"
FLAGS = ["-O3", "-march=native", "-std=c11", "-shared", "-fPIC", "-pthread"]


def cache_dir() -> Path:
    return Path(os.environ.get("LAGOON_CACHE_DIR") or Path.home() / ".cache" / "lagoon") / "sdc"


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.cache
def _library() -> ctypes.CDLL | None:
    compiler = _compiler()
    if compiler is None:
        return None
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + _cpu_signature().encode() + compiler.encode()).hexdigest()[:20]
    path = cache_dir() / f"fingerprint-{key}.so"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(staging)], capture_output=True, text=True)
        if result.returncode != 0:
            staging.unlink(missing_ok=True)
            warnings.warn(f"lagoon.sdc: could not build the native fingerprint kernel ({result.stderr.strip()[:200]}); "
                          f"using the torch kernel", stacklevel=2)
            return None
        staging.replace(path)
    library = ctypes.CDLL(str(path))
    library.lagoon_sdc_digest_many.restype = ctypes.c_int
    library.lagoon_sdc_digest_many.argtypes = [
        ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint64), ctypes.c_int,
        ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32), ctypes.c_uint32,
        ctypes.POINTER(ctypes.c_uint32), ctypes.c_int,
    ]
    assert library.lagoon_sdc_row_words() == ROW_WORDS
    return library


def available() -> bool:
    return _library() is not None


@functools.cache
def _tables(lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """The column weights [L, C] and row keys [L] as uint32 arrays for the C kernel."""
    weights = np.ascontiguousarray(col_weights_table(lanes).numpy().astype(np.uint32))
    keys = np.asarray(row_keys_table(lanes), dtype=np.uint32)
    return weights, keys


def digest_many(tensors: Sequence[torch.Tensor], lanes: int, threads: int = 1) -> torch.Tensor:
    """[P, L] int64 digests of CPU tensors with the C kernel (see `lagoon.sdc.fingerprint` for the spec)."""
    library = _library()
    assert library is not None, "native kernel unavailable"
    assert 1 <= lanes <= MAX_LANES
    keep = []
    pointers = (ctypes.c_void_p * len(tensors))()
    sizes = (ctypes.c_uint64 * len(tensors))()
    for i, tensor in enumerate(tensors):
        assert tensor.device.type == "cpu", tensor.device
        flat = tensor.detach().reshape(-1)
        if not flat.is_contiguous():
            flat = flat.contiguous()
        keep.append(flat)
        pointers[i] = flat.data_ptr() if flat.numel() else None
        sizes[i] = flat.numel() * flat.element_size()
    weights, keys = _tables(lanes)
    out = torch.zeros(len(tensors), lanes, dtype=torch.int32)
    status = library.lagoon_sdc_digest_many(
        len(tensors), pointers, sizes, lanes,
        weights.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
        keys.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)), SEED,
        ctypes.cast(out.data_ptr(), ctypes.POINTER(ctypes.c_uint32)), max(1, int(threads)))
    assert status == 0
    del keep
    return out.to(torch.int64) & 0xFFFFFFFF
