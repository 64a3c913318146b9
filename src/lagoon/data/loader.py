"""`MixtureLoader`: packed fixed-length training sequences drawn from leaves in mixture proportions.

Shapes: B = global batch rows, b = this rank's rows (B / world_size), T = seq_len, n = rows of one leaf.

The global stream is defined independently of ranks, and every rank computes all of it except the
token reads, so the union over ranks is the same stream for any world size:

1. Rows → leaves. Each global batch has B rows; rows go to leaves by smooth weighted round-robin (each
   row: every leaf's credit += weight, the leaf with most credit takes the row and pays 1), so every leaf
   gets its share of rows to within one row at every step, never a negative count. The rows of a batch
   are then shuffled with a generator seeded by (seed, step).
2. Leaf → window. A leaf's documents, shuffled per epoch (seed, leaf, epoch), form one token stream;
   the stream is cut into windows of T + 1 tokens starting every T tokens (the last token of a window is
   the first of the next), and the windows are visited in a per-epoch shuffled order. A row's
   ``input_ids`` are its window's first T tokens and its ``targets`` the last T, so ``targets[t]`` is the
   token after ``input_ids[t]`` in the packed stream (a document's last token predicts the next
   document's leading 〈|EOS|〉). ``document_ids`` number the documents within each row from 0 (for
   attention masking). One epoch of a leaf = all its windows once.
3. Ranks. Rank r takes rows [r·b, (r+1)·b) of each global batch and reads only their tokens (from
   memory maps, vectorised with numpy).

`state_dict()` is small JSON (step, round-robin credits, windows consumed per leaf) and holds only global
quantities, so a run resumes exactly, even at another world size. Reading a leaf past
`repetition_cap` epochs raises a one-line `LagoonError` on every rank at the same step.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lagoon.data.mixture import Mixture
from lagoon.data.shards import ShardSet, TokenStream
from lagoon.errors import ConfigError, LagoonError

STATE_VERSION = 1


@dataclass
class Batch:
    """One rank's share of a global batch; every tensor is int64 ``[b, T]``."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    document_ids: torch.Tensor


class _Leaf:
    """One leaf's shuffled epochs: document order, token offsets of that order, window order."""

    def __init__(self, name: str, stream: TokenStream, seq_len: int, seed: int):
        self.name, self.stream, self.seq_len, self.seed = name, stream, seq_len, seed
        self.key = zlib.crc32(name.encode())  # stable across leaf sets, so adding a leaf reshuffles no other
        self.windows_per_epoch = (stream.num_tokens - 1) // seq_len
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(document order D, start of each ordered document in the epoch stream D+1, window order W)."""
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, self.key, epoch])
            order_D = rng.permutation(len(self.stream.starts))
            offsets = np.zeros(len(order_D) + 1, dtype=np.int64)
            np.cumsum(self.stream.lengths[order_D], out=offsets[1:])
            windows_W = rng.permutation(self.windows_per_epoch)
            if len(self._epochs) >= 2:  # a step spans at most two epochs of a leaf
                del self._epochs[min(self._epochs)]
            self._epochs[epoch] = (order_D, offsets, windows_W)
        return self._epochs[epoch]

    def read(self, window_numbers_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and in-row document numbers, both ``[n, T+1]``, of the leaf's global window numbers."""
        steps = np.arange(self.seq_len + 1)
        tokens_nT = np.empty((len(window_numbers_n), self.seq_len + 1), dtype=np.int64)
        documents_nT = np.empty_like(tokens_nT)
        epochs_n = window_numbers_n // self.windows_per_epoch
        for epoch in np.unique(epochs_n):
            rows = np.flatnonzero(epochs_n == epoch)
            order_D, offsets, windows_W = self.epoch(int(epoch))
            window = windows_W[window_numbers_n[rows] % self.windows_per_epoch]
            positions_nT = window[:, None] * self.seq_len + steps[None, :]
            ordered_nT = np.searchsorted(offsets, positions_nT, side="right") - 1
            file_positions = self.stream.starts[order_D[ordered_nT]] + (positions_nT - offsets[ordered_nT])
            tokens_nT[rows] = self.stream.gather(file_positions)
            documents_nT[rows] = ordered_nT - ordered_nT[:, :1]
        return tokens_nT, documents_nT

    def read_reference(self, window_numbers_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`read`, one row and one document at a time (the plain definition the fast path must match)."""
        tokens, documents = [], []
        for number in window_numbers_n.tolist():
            order_D, _, windows_W = self.epoch(number // self.windows_per_epoch)
            start = int(windows_W[number % self.windows_per_epoch]) * self.seq_len
            row_tokens: list[int] = []
            row_documents: list[int] = []
            position = 0  # stream offset of the current document
            for rank, document in enumerate(order_D.tolist()):
                length = int(self.stream.lengths[document])
                if position + length > start and position < start + self.seq_len + 1:
                    lo, hi = max(start, position) - position, min(start + self.seq_len + 1, position + length) - position
                    row_tokens += self.stream.document(document)[lo:hi].tolist()
                    row_documents += [rank] * (hi - lo)
                position += length
                if position >= start + self.seq_len + 1:
                    break
            tokens.append(row_tokens)
            documents.append([d - row_documents[0] for d in row_documents])
        return np.array(tokens, dtype=np.int64), np.array(documents, dtype=np.int64)


class MixtureLoader:
    """Iterator of `Batch`es from a `ShardSet` under a `Mixture` (see the module docstring)."""

    def __init__(self, shards: ShardSet, mixture: Mixture, seq_len: int, global_batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, repetition_cap: float = 4.0):
        mixture.validate(shards)
        if seq_len < 1 or global_batch_size < 1:
            raise ConfigError("data.seq_len", "seq_len and global_batch_size must be positive")
        if global_batch_size % world_size:
            raise ConfigError("data.global_batch_size",
                              f"{global_batch_size} rows do not split evenly over {world_size} ranks")
        if not 0 <= rank < world_size:
            raise ConfigError("rank", f"rank {rank} is outside world size {world_size}")
        if repetition_cap <= 0:
            raise ConfigError("data.repetition_cap", "must be positive")
        self.shards, self.mixture = shards, mixture
        self.seq_len, self.global_batch_size, self.seed = seq_len, global_batch_size, seed
        self.rank, self.world_size, self.repetition_cap = rank, world_size, repetition_cap
        self.local_batch_size = global_batch_size // world_size
        self.names = [leaf for leaf in shards.leaves if mixture.weight(leaf) > 0]
        total = sum(mixture.weight(leaf) for leaf in self.names)
        self.weights = [mixture.weight(leaf) / total for leaf in self.names]
        self.leaves = [_Leaf(name, shards.leaf_stream(name), seq_len, seed) for name in self.names]
        for leaf in self.leaves:
            if leaf.windows_per_epoch < 1:
                raise ConfigError(f"data.mixture.{leaf.name}",
                                  f"has {leaf.stream.num_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        self.step = 0
        self.credit = [0.0] * len(self.leaves)
        self.consumed = [0] * len(self.leaves)

    @classmethod
    def from_config(cls, data_config, rank: int = 0, world_size: int = 1,
                    expected_tokenizer_hash: str | None = None) -> "MixtureLoader":
        """A loader for a ``[data]`` config section (`lagoon.data.config.DataConfig`)."""
        from lagoon.data.mixture import resolve_mixture

        if not data_config.shards:
            raise ConfigError("data.shards", "set it to a shard set directory (lagoon data build CONFIG --out DIR)")
        shards = ShardSet.open(data_config.shards, expected_tokenizer_hash=expected_tokenizer_hash)
        return cls(shards, resolve_mixture(data_config, shards), data_config.seq_len, data_config.global_batch_size,
                   seed=data_config.seed, rank=rank, world_size=world_size, repetition_cap=data_config.repetition_cap)

    # ------------------------------------------------------------------------------------------ stream
    def _assign_rows(self) -> np.ndarray:
        """Leaf index of each of the B rows of the current global step (advances the credits)."""
        rows = np.empty(self.global_batch_size, dtype=np.int64)
        credit, weights = self.credit, self.weights
        for row in range(self.global_batch_size):
            best = 0
            for index, weight in enumerate(weights):
                credit[index] += weight
                if credit[index] > credit[best]:
                    best = index
            credit[best] -= 1.0
            rows[row] = best
        return np.random.default_rng([self.seed, self.step, 0x6C61]).permutation(rows)

    def __iter__(self) -> "MixtureLoader":
        return self

    def __next__(self) -> Batch:
        leaf_B = self._assign_rows()
        # Global window number of every row: each leaf's rows take its next windows in row order.
        window_B = np.empty(self.global_batch_size, dtype=np.int64)
        for index in np.unique(leaf_B):
            rows = np.flatnonzero(leaf_B == index)
            window_B[rows] = self.consumed[index] + np.arange(len(rows))
            self.consumed[index] += len(rows)
            leaf = self.leaves[index]
            epochs = self.consumed[index] / leaf.windows_per_epoch
            if epochs > self.repetition_cap + 1e-9:
                raise LagoonError(
                    f"step {self.step} would read leaf {leaf.name} for a {epochs:.2f}th epoch, over the repetition "
                    f"cap of {self.repetition_cap:g}; lower its weight, add data or raise data.repetition_cap")
        mine = slice(self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size)
        tokens_bT = np.empty((self.local_batch_size, self.seq_len + 1), dtype=np.int64)
        documents_bT = np.empty_like(tokens_bT)
        leaf_b, window_b = leaf_B[mine], window_B[mine]
        for index in np.unique(leaf_b):
            rows = np.flatnonzero(leaf_b == index)
            tokens_bT[rows], documents_bT[rows] = self.leaves[index].read(window_b[rows])
        self.step += 1
        return Batch(input_ids=torch.from_numpy(tokens_bT[:, :-1].copy()),
                     targets=torch.from_numpy(tokens_bT[:, 1:].copy()),
                     document_ids=torch.from_numpy(documents_bT[:, :-1].copy()))

    # ------------------------------------------------------------------------------------------ state
    @property
    def epochs(self) -> dict[str, float]:
        """Epochs consumed of every leaf of the shard set (0 for leaves the mixture does not read)."""
        epochs = {leaf: 0.0 for leaf in self.shards.leaves}
        for leaf, consumed in zip(self.leaves, self.consumed):
            epochs[leaf.name] = consumed / leaf.windows_per_epoch
        return epochs

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION, "step": self.step, "seed": self.seed, "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size, "tokenizer_hash": self.shards.tokenizer_hash,
            "weights": dict(zip(self.names, self.weights)), "credit": list(self.credit),
            "consumed": dict(zip(self.names, self.consumed)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise LagoonError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}")
        current = {"seed": self.seed, "seq_len": self.seq_len, "global_batch_size": self.global_batch_size,
                   "tokenizer_hash": self.shards.tokenizer_hash}
        for key, value in current.items():
            if state.get(key) != value:
                raise LagoonError(f"cannot resume the data loader: it was saved with {key} = {state.get(key)!r}, "
                                  f"this run has {value!r}")
        if list(state["weights"]) != self.names or any(abs(a - b) > 1e-12 for a, b in zip(state["weights"].values(), self.weights)):
            raise LagoonError("cannot resume the data loader: it was saved with a different mixture")
        self.step = int(state["step"])
        self.credit = [float(c) for c in state["credit"]]
        self.consumed = [int(state["consumed"][name]) for name in self.names]
