"""Held-out evaluation sets and the bits-per-byte definition lagoon reports.

Shapes: B = rows per batch, T = tokens per row.

An `EvalSet` is the held-out documents of one capability group, tokenized like the training shards
(each document led by 〈|EOS|〉) and never part of any leaf. Bits per byte over it is

    bpb = Σ_t −log2 p(x_t | x_<t)  /  Σ_t token_bytes[x_t]

where t runs over every *predicted* token of the concatenated eval stream, i.e. every token except the
first (which is an 〈|EOS|〉, 0 bytes). `token_bytes` is `ShardSet.token_bytes` (UTF-8 bytes each id
decodes to, 0 for special tokens), so the denominator is `EvalSet.num_bytes`, and for plain-text
documents it equals their UTF-8 size (`raw_bytes`). `EvalSet.batches` cuts the stream into rows that
predict each of those tokens exactly once, so summing ``−log_softmax`` at the targets over all batches,
divided by ``ln 2 · num_bytes``, is the figure.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lagoon.data.shards import TokenStream

IGNORE_INDEX = -100


@dataclass
class EvalSet:
    """Held-out token ids (with document boundaries) and their byte counts."""

    group: str
    stream: TokenStream
    raw_bytes: int
    """UTF-8 bytes of the held-out documents' text."""
    num_bytes: int
    """Σ token_bytes over every token: the bits-per-byte denominator."""

    @property
    def num_tokens(self) -> int:
        return self.stream.num_tokens

    @property
    def num_documents(self) -> int:
        return len(self.stream.starts)

    @property
    def document_starts(self) -> np.ndarray:
        """int64[D]: start offset of each document in `token_ids`."""
        return self.stream.starts

    @property
    def token_ids(self) -> np.ndarray:
        """int64[N]: every held-out token id, documents back to back."""
        return self.stream.gather(np.arange(self.num_tokens))

    def batches(self, seq_len: int, batch_size: int, max_tokens: int | None = None) -> Iterator:
        """`lagoon.data.Batch`es whose targets cover every predicted token exactly once.

        Row r holds stream tokens [r·T, r·T + T) as inputs and [r·T + 1, r·T + T + 1) as targets; the
        last row is padded with `IGNORE_INDEX` targets. `max_tokens` evaluates only a prefix of the stream.
        """
        import torch

        from lagoon.data.loader import Batch

        ids = self.token_ids
        if max_tokens is not None:
            ids = ids[: max_tokens + 1]
        document_index = np.searchsorted(self.stream.starts, np.arange(len(ids)), side="right") - 1
        predicted = len(ids) - 1
        rows = -(-predicted // seq_len)
        for first in range(0, rows, batch_size):
            count = min(batch_size, rows - first)
            input_BT = np.zeros((count, seq_len), dtype=np.int64)
            target_BT = np.full((count, seq_len), IGNORE_INDEX, dtype=np.int64)
            document_BT = np.zeros((count, seq_len), dtype=np.int64)
            for row in range(count):
                start = (first + row) * seq_len
                stop = min(start + seq_len, predicted)
                input_BT[row, : stop - start] = ids[start:stop]
                target_BT[row, : stop - start] = ids[start + 1 : stop + 1]
                documents = document_index[start:stop]
                document_BT[row, : stop - start] = documents - documents[0]
                document_BT[row, stop - start :] = document_BT[row, max(0, stop - start - 1)] + 1
            yield Batch(torch.from_numpy(input_BT), torch.from_numpy(target_BT), torch.from_numpy(document_BT))
