"""MixtureLoader: determinism, rank slicing, world-size independence, exact resume, repetition cap."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lagoon.data import Mixture, MixtureLoader, ShardSet
from lagoon.errors import ConfigError, LagoonError
from lagoon.tokens import EOS_ID


@pytest.fixture(scope="module")
def shards(quick_shards_dir):
    return ShardSet.open(quick_shards_dir)


def _take(loader, steps):
    return [next(loader) for _ in range(steps)]


def _equal(a, b):
    return all(torch.equal(x.input_ids, y.input_ids) and torch.equal(x.targets, y.targets)
               and torch.equal(x.document_ids, y.document_ids) for x, y in zip(a, b, strict=True))


def test_batches_are_packed_shifted_and_marked_by_document(shards):
    loader = MixtureLoader(shards, shards.natural_mixture(), seq_len=64, global_batch_size=8, seed=0)
    for batch in _take(loader, 5):
        assert batch.input_ids.shape == batch.targets.shape == batch.document_ids.shape == (8, 64)
        assert batch.input_ids.dtype == batch.targets.dtype == batch.document_ids.dtype == torch.int64
        assert torch.equal(batch.input_ids[:, 1:], batch.targets[:, :-1])
        ids, docs = batch.input_ids, batch.document_ids
        assert (docs[:, 0] == 0).all()
        step = docs[:, 1:] - docs[:, :-1]
        assert ((step == 0) | (step == 1)).all()
        # A new document starts exactly where its leading EOS is.
        assert torch.equal(step == 1, ids[:, 1:] == EOS_ID)
        assert int(ids.max()) < shards.vocab_size


def test_fast_read_matches_reference(shards):
    loader = MixtureLoader(shards, shards.natural_mixture(), seq_len=48, global_batch_size=4, seed=3)
    for leaf in loader.leaves[:6]:
        windows = np.array([0, 1, leaf.windows_per_epoch - 1, leaf.windows_per_epoch, 2 * leaf.windows_per_epoch + 5])
        fast = leaf.read(windows)
        reference = leaf.read_reference(windows)
        assert np.array_equal(fast[0], reference[0]) and np.array_equal(fast[1], reference[1])


def test_deterministic_for_a_seed(shards):
    mixture = shards.natural_mixture()
    first = _take(MixtureLoader(shards, mixture, 64, 8, seed=1), 6)
    again = _take(MixtureLoader(shards, mixture, 64, 8, seed=1), 6)
    other = _take(MixtureLoader(shards, mixture, 64, 8, seed=2), 6)
    assert _equal(first, again)
    assert not _equal(first, other)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_are_disjoint_slices_of_the_same_global_stream(shards, world_size):
    mixture = shards.natural_mixture()
    single = _take(MixtureLoader(shards, mixture, 32, 8, seed=0), 4)
    ranks = [_take(MixtureLoader(shards, mixture, 32, 8, seed=0, rank=r, world_size=world_size), 4)
             for r in range(world_size)]
    for step, whole in enumerate(single):
        parts = [ranks[r][step] for r in range(world_size)]
        assert all(p.input_ids.shape == (8 // world_size, 32) for p in parts)
        assert torch.equal(torch.cat([p.input_ids for p in parts]), whole.input_ids)
        assert torch.equal(torch.cat([p.targets for p in parts]), whole.targets)
        assert torch.equal(torch.cat([p.document_ids for p in parts]), whole.document_ids)
        rows = {tuple(row.tolist()) for p in parts for row in p.input_ids}
        assert len(rows) == 8  # no sample is read by two ranks


def test_mixture_proportions_are_met_row_by_row(shards):
    leaves = shards.leaves[:3]
    mixture = Mixture({leaves[0]: 0.5, leaves[1]: 0.25, leaves[2]: 0.25})
    loader = MixtureLoader(shards, mixture, 16, 8, seed=0, repetition_cap=1000)
    _take(loader, 10)
    assert loader.consumed == [40, 20, 20]


def test_resume_exactly_mid_epoch_even_at_another_world_size(shards):
    mixture = shards.natural_mixture()
    loader = MixtureLoader(shards, mixture, 64, 8, seed=5)
    _take(loader, 7)
    state = json.loads(json.dumps(loader.state_dict()))
    assert 0 < max(loader.epochs.values()) < 1  # genuinely mid-epoch
    expected = _take(loader, 5)
    resumed = MixtureLoader(shards, mixture, 64, 8, seed=5)
    resumed.load_state_dict(state)
    assert _equal(_take(resumed, 5), expected)
    halves = [MixtureLoader(shards, mixture, 64, 8, seed=5, rank=r, world_size=2) for r in range(2)]
    for half in halves:
        half.load_state_dict(state)
    for step in range(5):
        got = torch.cat([next(half).input_ids for half in halves])
        assert torch.equal(got, expected[step].input_ids)
    with pytest.raises(LagoonError, match="seq_len"):
        MixtureLoader(shards, mixture, 32, 8, seed=5).load_state_dict(state)


def test_epochs_cover_every_window_once_and_the_cap_stops_the_loader(shards):
    leaf = min(shards.leaves, key=lambda name: shards.leaf_tokens[name])
    loader = MixtureLoader(shards, Mixture({leaf: 1.0}), 32, 1, seed=0, repetition_cap=2)
    windows = loader.leaves[0].windows_per_epoch
    first_epoch = {tuple(next(loader).input_ids[0].tolist()) for _ in range(windows)}
    assert len(first_epoch) == windows
    assert loader.epochs[leaf] == pytest.approx(1.0)
    _take(loader, windows)
    assert loader.epochs[leaf] == pytest.approx(2.0)
    with pytest.raises(LagoonError, match=f"leaf {leaf}.*repetition cap of 2"):
        next(loader)


def test_bad_mixtures_are_refused(shards):
    leaf, other = shards.leaves[:2]
    for weights, fragment in (({leaf: 1.5, other: -0.5}, "must be a finite number >= 0"),
                              ({leaf: 0.5, other: 0.4}, "sum to 0.9"),
                              ({leaf: 0.5, "web/q1": 0.5}, "unknown leaf")):
        with pytest.raises(ConfigError, match=fragment) as caught:
            MixtureLoader(shards, Mixture(weights), 32, 8)
        assert "\n" not in str(caught.value)


def test_rank_setup_errors(shards):
    with pytest.raises(ConfigError, match="do not split evenly"):
        MixtureLoader(shards, shards.natural_mixture(), 32, 6, world_size=4)


def test_subset_view_keeps_a_fraction_of_each_leaf(shards):
    half = shards.subset(0.5)
    for leaf, tokens in shards.leaf_tokens.items():
        assert 0.3 * tokens < half.leaf_tokens[leaf] <= tokens
    batch = next(MixtureLoader(half, half.natural_mixture(), 32, 4, seed=0))
    assert batch.input_ids.shape == (4, 32)
