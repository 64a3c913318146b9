"""Fingerprints of tensors' raw bits, computed where the tensors live.

A fingerprint is `lanes` 32-bit numbers per tensor (4 by default: 128 bits). It reads the tensor's
bytes, not its values, so −0.0 and +0.0 differ, NaNs with different payloads differ, and any dtype works
(fp32, bf16, fp16, fp8, integers, bool). The spec, which every implementation below follows bit for bit:

    words   the tensor's bytes in memory order as little-endian uint32 words w[0..n), the last one
            zero-padded; arranged in rows of ROW_WORDS = 1024 words, the last row zero-padded
    mix     h = fmix32(w ^ SEED), MurmurHash3's 32-bit finalizer (Appleby 2008), a bijection of words
    lane l  S_l(r) = Σ_c h[r, c] · W_l(c)   and   D_l = Σ_r S_l(r) · G_l(r)        (all mod 2^32)
            W_l(c) = fmix32(((l << 16) | c) ^ COL_SALT) | 1,   G_l(r) = fmix32(r ^ row_key(l)) | 1

Why it catches what a checksum would miss:

- *Any change confined to one word is detected in every lane, with certainty.* fmix32 is a bijection,
  so the word's mixed value changes by some Δ ≠ 0 (mod 2^32); its weight W·G is odd, hence invertible
  mod 2^32, so the lane changes by Δ·W·G ≠ 0. A flipped sign, exponent or mantissa bit — or any
  corruption of one fp32 value or of two adjacent bf16 values — can never go unnoticed.
- *Swaps and cancelling errors.* A plain sum misses two values swapped, or +δ here and −δ there. Here
  every position has its own pseudo-random odd weight, and the nonlinear mix decorrelates the Δ of
  different words, so such a pair changes lane l unless Σ Δ_i·W_l·G_l ≡ 0 (mod 2^32): about a 2^-32
  chance per lane for unrelated errors. Lanes use independent weights, so a multi-word corruption
  escapes all 4 lanes with probability about 2^-128.
- *Order-free and exact.* Integer sums mod 2^32 do not depend on summation order, so the digest is the
  same on any device, thread count or kernel — replicas never disagree because of the hash itself.

Implementations (tested against each other): `reference_digest` (pure Python, the spec written out);
`torch` (tensor ops in int64 on any device, every product kept below 2^49 so nothing relies on integer
overflow; optionally `torch.compile`d into one fused kernel per shape class — the GPU path); `native`
(a small C kernel built with the system compiler on first use — the CPU fast path). `Fingerprinter`
picks one per device and digests a whole list of tensors into a [P, lanes] int64 table.

Shape legend: P tensors, L lanes, R rows, C = ROW_WORDS columns.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch

ROW_WORDS = 1024
MAX_LANES = 8
MASK32 = 0xFFFFFFFF
# Arbitrary odd constants; the golden-ratio and Murmur-style values only spread the bits (any fixed choice works).
SEED = 0x9E3779B9
COL_SALT = 0x7F4A7C15
ROW_SALT = 0x94D049BB
# MurmurHash3 fmix32 multipliers (Appleby 2008, "MurmurHash3", fmix32).
FMIX_1 = 0x85EBCA6B
FMIX_2 = 0xC2B2AE35

Kernel = Literal["auto", "native", "compiled", "torch"]


# --------------------------------------------------------------------------------------------------
# The spec in pure Python


def fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * FMIX_1) & MASK32
    h ^= h >> 13
    h = (h * FMIX_2) & MASK32
    return h ^ (h >> 16)


def row_key(lane: int) -> int:
    return fmix32((ROW_SALT + lane) & MASK32)


def col_weight(lane: int, col: int) -> int:
    return fmix32(((lane << 16) | col) ^ COL_SALT) | 1


def row_weight(lane: int, row: int) -> int:
    return fmix32((row & MASK32) ^ row_key(lane)) | 1


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's raw bytes in memory order (of a contiguous copy)."""
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    return bytes(flat.cpu().tolist())


def reference_digest(tensor: torch.Tensor, lanes: int = 4) -> list[int]:
    """The digest as the spec defines it, one word at a time (slow; for tests on small tensors)."""
    data = tensor_bytes(tensor)
    data += b"\0" * (-len(data) % 4)
    words = [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]
    rows = max(1, -(-len(words) // ROW_WORDS)) if words else 0
    words += [0] * (rows * ROW_WORDS - len(words))
    digest = []
    for lane in range(lanes):
        total = 0
        for r in range(rows):
            row = words[r * ROW_WORDS : (r + 1) * ROW_WORDS]
            s = sum(fmix32(w ^ SEED) * col_weight(lane, c) for c, w in enumerate(row)) & MASK32
            total = (total + s * row_weight(lane, r)) & MASK32
        digest.append(total)
    return digest


# --------------------------------------------------------------------------------------------------
# Exact uint32 arithmetic with torch int64 tensors (no product ever exceeds 2^49)


def _mul32(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    """(a·b) mod 2^32 for int64 tensors (or an int) holding values in [0, 2^32): b is split into 16-bit halves."""
    if isinstance(b, int):
        low, high = b & 0xFFFF, b >> 16
    else:
        low, high = b & 0xFFFF, b >> 16
    return (a * low + (((a * high) & 0xFFFF) << 16)) & MASK32


def _fmix32_t(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, FMIX_1)
    h = h ^ (h >> 13)
    h = _mul32(h, FMIX_2)
    return h ^ (h >> 16)


@functools.cache
def col_weights_table(lanes: int) -> torch.Tensor:
    """W [L, C] as int64 (CPU)."""
    return torch.tensor([[col_weight(lane, c) for c in range(ROW_WORDS)] for lane in range(lanes)], dtype=torch.int64)


@functools.cache
def row_keys_table(lanes: int) -> tuple[int, ...]:
    return tuple(row_key(lane) for lane in range(lanes))


def torch_row_sums(words_RC: torch.Tensor, weights_LC: torch.Tensor) -> torch.Tensor:
    """S [R, L]: per row and lane, Σ_c fmix32(w ^ SEED)·W_l(c) mod 2^32 (words as int32 or int64, any sign)."""
    h_RC = _fmix32_t((words_RC.to(torch.int64) & MASK32) ^ SEED)
    sums = [(_mul32(h_RC, weights_LC[lane]).sum(dim=1)) & MASK32 for lane in range(weights_LC.shape[0])]
    return torch.stack(sums, dim=1)


def combine_rows(sums_RL: torch.Tensor, first_row: int, lanes: int) -> torch.Tensor:
    """Σ_r S_l(r)·G_l(first_row + r) mod 2^32 → [L] (int64)."""
    rows = torch.arange(first_row, first_row + sums_RL.shape[0], dtype=torch.int64, device=sums_RL.device)
    keys = torch.tensor(row_keys_table(lanes), dtype=torch.int64, device=sums_RL.device)
    weights_RL = _fmix32_t((rows & MASK32).unsqueeze(1) ^ keys) | 1
    return _mul32(sums_RL, weights_RL).sum(dim=0) & MASK32


@functools.cache
def _compiled_row_sums():
    return torch.compile(torch_row_sums, dynamic=True)


def _words(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(full rows [R, C] int32 view without a copy where possible, last partial row [1, C] zero-padded or [0, C])."""
    flat = tensor.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    data = flat.view(torch.uint8)
    nbytes = data.numel()
    full = nbytes // (4 * ROW_WORDS)
    body = data[: full * 4 * ROW_WORDS]
    if body.numel() and body.data_ptr() % 4 == 0:
        rows_RC = body.view(torch.int32).view(full, ROW_WORDS)
    else:
        rows_RC = body.clone().view(torch.int32).view(full, ROW_WORDS)
    rest = data[full * 4 * ROW_WORDS :]
    tail_RC = torch.zeros((1 if rest.numel() else 0), 4 * ROW_WORDS, dtype=torch.uint8, device=data.device)
    if rest.numel():
        tail_RC[0, : rest.numel()] = rest
    return rows_RC, tail_RC.view(torch.int32)


def torch_digest(tensor: torch.Tensor, lanes: int = 4, compiled: bool = False,
                 chunk_rows: int = 2048) -> torch.Tensor:
    """[L] int64 digest with torch ops on the tensor's device (rows processed `chunk_rows` at a time)."""
    weights_LC = col_weights_table(lanes).to(tensor.device)
    row_sums = _compiled_row_sums() if compiled else torch_row_sums
    rows_RC, tail_RC = _words(tensor)
    total = torch.zeros(lanes, dtype=torch.int64, device=tensor.device)
    for start in range(0, rows_RC.shape[0], chunk_rows):
        sums_RL = row_sums(rows_RC[start : start + chunk_rows], weights_LC)
        total = (total + combine_rows(sums_RL, start, lanes)) & MASK32
    if tail_RC.shape[0]:
        sums_RL = torch_row_sums(tail_RC, weights_LC)
        total = (total + combine_rows(sums_RL, rows_RC.shape[0], lanes)) & MASK32
    return total


# --------------------------------------------------------------------------------------------------
# Many tensors at once


class Fingerprinter:
    """Digests lists of tensors into a [P, L] int64 table (values in [0, 2^32)) on their own devices.

    ``kernel``: ``"auto"`` uses the native C kernel for CPU tensors when it builds, and the compiled torch
    kernel for accelerator tensors; ``"native"``, ``"compiled"`` and ``"torch"`` force one (``"native"``
    falls back to ``"torch"`` with a warning when no C compiler is available).
    """

    def __init__(self, lanes: int = 4, kernel: Kernel = "auto", threads: int | None = None):
        assert 1 <= lanes <= MAX_LANES, lanes
        self.lanes = lanes
        self.kernel = kernel
        self.threads = threads

    def kernel_for(self, device: torch.device) -> str:
        from lagoon.sdc import native

        if self.kernel == "native" or (self.kernel == "auto" and device.type == "cpu"):
            if device.type == "cpu" and native.available():
                return "native"
            return "torch" if device.type == "cpu" else "compiled"
        if self.kernel == "auto":
            return "compiled"
        return self.kernel

    def digest(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """[P, L] int64 on the CPU: row i is the digest of tensors[i]."""
        from lagoon.sdc import native

        out_PL = torch.zeros(len(tensors), self.lanes, dtype=torch.int64)
        by_kernel: dict[str, list[int]] = {}
        for index, tensor in enumerate(tensors):
            by_kernel.setdefault(self.kernel_for(tensor.device), []).append(index)
        for kernel, indices in by_kernel.items():
            if kernel == "native":
                threads = self.threads or torch.get_num_threads()
                out_PL[indices] = native.digest_many([tensors[i] for i in indices], self.lanes, threads)
            else:
                digests = [torch_digest(tensors[i], self.lanes, compiled=kernel == "compiled") for i in indices]
                out_PL[indices] = torch.stack(digests).cpu()
        return out_PL


def format_digest(row: Sequence[int] | torch.Tensor) -> str:
    """A digest row as hex, lanes separated by dots (e.g. ``1a2b3c4d.…``)."""
    values = row.tolist() if isinstance(row, torch.Tensor) else list(row)
    return ".".join(f"{int(v):08x}" for v in values)
