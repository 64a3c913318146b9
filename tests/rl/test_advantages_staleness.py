"""Group-normalized advantages, the zero-variance filter and the staleness admission rule."""

from __future__ import annotations

import math

import pytest

from lagoon.rl.advantages import group_advantages, zero_variance
from lagoon.rl.staleness import StalenessFilter, actor_budget, admissible, histogram, staleness


def test_group_advantages_are_centred_and_scaled():
    advantages = group_advantages([1.0, 0.0, 0.0, 1.0])
    assert advantages == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-5)   # mean 0.5, population std 0.5
    advantages = group_advantages([3.0, 0.0, 0.0], std_normalize=False)
    assert advantages == pytest.approx([2.0, -1.0, -1.0])
    one_right = group_advantages([1.0, 0.0, 0.0, 0.0])
    assert sum(one_right) == pytest.approx(0.0, abs=1e-9)
    assert one_right[0] == pytest.approx(0.75 / math.sqrt(0.1875), rel=1e-5)


def test_zero_variance_groups_are_detected():
    assert zero_variance([1.0, 1.0, 1.0])
    assert zero_variance([0.0, 0.0])
    assert not zero_variance([0.0, 1.0, 0.0])
    assert group_advantages([0.5, 0.5]) == [0.0, 0.0]


def test_admission_budget_follows_the_areal_rule():
    # η = 1, B = 4, one actor: at most (η+1)·B = 8 groups outstanding.
    budget = actor_budget(max_staleness=1, groups_per_step=4, num_actors=1)
    assert budget == 8
    assert admissible(budget, appended=0, consumed=0, running=0) == 8
    assert admissible(budget, appended=6, consumed=0, running=2) == 0
    # The trainer publishes version 1 after consuming 4 of them: 4 slots free up.
    assert admissible(budget, appended=6, consumed=4, running=2) == 4
    # Two actors split the budget; a budget never drops below one group.
    assert actor_budget(1, 4, 2) == 4
    assert actor_budget(0, 1, 3) == 1
    # η = 0 is synchronous: nothing new starts until everything outstanding was consumed.
    sync = actor_budget(0, 4, 1)
    assert admissible(sync, appended=4, consumed=0, running=0) == 0
    assert admissible(sync, appended=4, consumed=4, running=0) == 4


def test_a_fifo_trainer_never_sees_data_older_than_the_bound():
    """Simulate actors that obey the budget and a trainer consuming B groups per version, FIFO."""
    for eta in (0, 1, 3):
        B, version, queue, appended, consumed, seen = 3, 0, [], 0, 0, []
        budget = actor_budget(eta, B, 1)
        for _ in range(40):
            # Actors fill every free slot with groups sampled by the current version (instant episodes).
            for _ in range(admissible(budget, appended, consumed, 0)):
                queue.append(version)
                appended += 1
            if len(queue) >= B:                               # the trainer takes one step
                batch, queue = queue[:B], queue[B:]
                seen += [staleness(version, v) for v in batch]
                consumed += B
                version += 1
        assert max(seen) == eta, (eta, histogram(seen))
        assert all(StalenessFilter(eta).admit(version, version - s) for s in seen)


def test_staleness_filter_and_histogram():
    keep = StalenessFilter(max_staleness=2)
    assert keep.admit(10, 8) and not keep.admit(10, 7)
    assert staleness(3, 5) == 0          # data from versions a restarted trainer will produce again
    assert histogram([0, 2, 0, 1]) == {"0": 2, "1": 1, "2": 1}
