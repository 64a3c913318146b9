"""A shard set whose leaves are cut to a fixed share of their documents: how a proxy matches repetition.

A proxy trains on B tokens while the target run trains on T; if both read the whole corpus, the proxy sees
each leaf T/B times less often than the target run would, and a mixture that is fine for the proxy can
repeat a small leaf many times at scale. Cutting every leaf to the share f = B/T of its documents makes
the proxy read each leaf ``w·B / (f·N) = w·T / N`` times, exactly the target run's epochs.

The documents kept are a seeded random subset (not a prefix: leaves are stored in source order, so a
prefix of the standard library would be a few packages), chosen per leaf until f of its tokens are
reached, and never fewer than one training window. `LeafSubset` is a read-only view: it forwards
everything to the underlying `ShardSet` (held-out sets, tokenizer, bytes per token) except the leaves'
token streams and counts.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from lagoon.data.shards import TokenStream

# Seeds the per-leaf document choice (with the leaf's name), so every proxy and validation run of a sweep
# reads the same subset.
SUBSET_SEED = 0x5EED


@dataclass
class _SubsetStream(TokenStream):
    """A `TokenStream` restricted to some of its documents (the memory maps are shared)."""

    subset_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return self.subset_tokens


class LeafSubset:
    """`shards` with every leaf cut to `fraction` of its tokens (whole documents, seeded choice)."""

    def __init__(self, shards: Any, fraction: float, min_tokens: int = 0):
        assert 0 < fraction <= 1, fraction
        self._shards = shards
        self.fraction = fraction
        self.min_tokens = min_tokens
        self._streams: dict[str, TokenStream] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shards, name)

    def leaf_stream(self, leaf: str) -> TokenStream:
        if leaf not in self._streams:
            full = self._shards.leaf_stream(leaf)
            if self.fraction >= 1:
                self._streams[leaf] = full
            else:
                rng = np.random.default_rng([SUBSET_SEED, zlib.crc32(leaf.encode())])
                order = rng.permutation(len(full.starts))
                wanted = max(self.fraction * full.num_tokens, self.min_tokens)
                count = int(np.searchsorted(np.cumsum(full.lengths[order]), wanted) + 1)
                keep = np.sort(order[: min(count, len(order))])
                self._streams[leaf] = _SubsetStream(full.tokens, full.starts[keep], full.lengths[keep],
                                                    full.shard_bases, int(full.lengths[keep].sum()))
        return self._streams[leaf]

    @property
    def leaf_tokens(self) -> dict[str, int]:
        return {leaf: self.leaf_stream(leaf).num_tokens for leaf in self._shards.leaves}

    def natural_mixture(self):
        from lagoon.data.mixture import Mixture

        tokens = self.leaf_tokens
        total = sum(tokens.values())
        return Mixture({leaf: count / total for leaf, count in tokens.items()})
