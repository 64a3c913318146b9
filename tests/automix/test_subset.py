"""A proxy reading a leaf subset repeats every leaf exactly as often as the target run would."""

from __future__ import annotations

import pytest

from lagoon.automix.subset import LeafSubset
from lagoon.data import Mixture, MixtureLoader, ShardSet
from lagoon.errors import LagoonError


@pytest.fixture(scope="module")
def shards(shard_dir):
    return ShardSet.open(shard_dir)


def test_subset_keeps_whole_documents_and_the_requested_share(shards):
    view = LeafSubset(shards, 0.25, min_tokens=65)
    for leaf in shards.leaves:
        full, part = shards.leaf_stream(leaf), view.leaf_stream(leaf)
        assert set(part.starts.tolist()) <= set(full.starts.tolist())
        assert part.num_tokens == int(part.lengths.sum()) >= max(0.25 * full.num_tokens, 65)
        # At most one document beyond the share (the one that crossed it).
        assert part.num_tokens - full.lengths.max() < max(0.25 * full.num_tokens, 65)
    assert view.groups == shards.groups and view.token_bytes is shards.token_bytes
    assert LeafSubset(shards, 0.25).leaf_stream("math/q1").starts.tolist() == view.leaf_stream("math/q1").starts.tolist()


def test_matched_repetition_hits_the_cap_where_the_target_run_would(shards):
    """Target run: T tokens of one leaf of N tokens reads it T/N times. A proxy with B = T/4 on the quarter
    subset reads it (T/4)/(N/4) = T/N times: under a cap of 1 epoch it must stop exactly where T > N would."""
    leaf, seq_len, batch = "math/q2", 64, 4
    view = LeafSubset(shards, 0.25)
    subset_tokens = view.leaf_tokens[leaf]
    mixture = Mixture({leaf: 1.0})
    loader = MixtureLoader(view, mixture, seq_len=seq_len, global_batch_size=batch, repetition_cap=1.0)
    within = int(0.9 * subset_tokens) // (seq_len * batch)
    for _ in range(within):
        next(loader)  # 90% of the subset: fine
    # The full leaf is 4× larger, so only a loader that reads the subset stops here.
    assert 4 * subset_tokens > shards.leaf_tokens[leaf] * 0.99
    with pytest.raises(LagoonError, match="repetition cap|times"):
        for _ in range(int(0.3 * subset_tokens) // (seq_len * batch) + 2):
            next(loader)
