"""A proxy trained on the leaf subset its budget calls for repeats every leaf exactly as often as the
target run would (`ShardSet.subset`, as `lagoon.automix.runs.train_run` uses it)."""

from __future__ import annotations

import pytest

from lagoon.automix.space import MixtureSpace
from lagoon.data import Mixture, MixtureLoader, ShardSet
from lagoon.errors import LagoonError


@pytest.fixture(scope="module")
def shards(shard_dir):
    return ShardSet.open(shard_dir)


def test_the_subset_keeps_the_share_of_each_leaf_the_proxy_budget_calls_for(shards):
    view = shards.subset(0.25)
    for leaf in shards.leaves:
        full, part = shards.leaf_stream(leaf), view.leaf_stream(leaf)
        assert set(part.starts.tolist()) <= set(full.starts.tolist())  # whole documents of the leaf
        assert 0.25 * full.num_tokens <= part.num_tokens < 0.25 * full.num_tokens + full.lengths.max() + 1
    assert view.groups == shards.groups


def test_matched_repetition_hits_the_cap_where_the_target_run_would(shards):
    """Target run: T = N tokens of one leaf of N tokens is one epoch. A proxy with B = T/4 reading the quarter
    subset is at one epoch too, so under a cap of 1 epoch both stop at the same point of their budgets."""
    leaf, seq_len, batch = "math/q2", 64, 4
    target_tokens = shards.leaf_tokens[leaf]
    space = MixtureSpace(tuple(shards.leaves), tuple(shards.leaf_tokens.values()), target_tokens, max_epochs=1.0)
    weights = {name: 1.0 if name == leaf else 0.0 for name in shards.leaves}
    assert space.epochs(space.from_dict(weights))[space.leaves.index(leaf)] == pytest.approx(1.0)

    view = shards.subset(0.25)
    loader = MixtureLoader(view, Mixture({leaf: 1.0}), seq_len=seq_len, global_batch_size=batch, repetition_cap=1.0)
    step_tokens = seq_len * batch
    for _ in range(int(0.9 * view.leaf_tokens[leaf]) // step_tokens):
        next(loader)  # 90% of the proxy's budget B = T/4: within the cap, like 90% of the target run
    with pytest.raises(LagoonError, match="repetition|times"):
        for _ in range(int(0.2 * view.leaf_tokens[leaf]) // step_tokens + 2):
            next(loader)  # past B: over the cap, exactly where the target run would be past T
