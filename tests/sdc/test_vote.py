"""The vote names the replicas outside a strict majority and leaves ties and pairs unresolved."""

from __future__ import annotations

import torch

from lagoon.sdc.checker import decode_digest, differing_parameters, encode_digest
from lagoon.sdc.vote import compare_runs, vote

NAMES = ["a", "b", "c"]


def _table(replicas: int) -> torch.Tensor:
    base = torch.randint(0, 2**32, (len(NAMES), 4), dtype=torch.int64)
    return base.unsqueeze(0).repeat(replicas, 1, 1)


def test_agreement_is_one_comparison():
    verdict = vote(_table(4), NAMES)
    assert verdict.agreed and verdict.resolved and verdict.faulty_replicas() == {} and verdict.suspects() == []


def test_majority_names_the_faulty_replica_and_parameter():
    table = _table(3)
    table[2, 1, 0] ^= 1
    verdict = vote(table, NAMES)
    assert not verdict.agreed and verdict.resolved
    assert verdict.faulty_replicas() == {2: ["b"]}
    table[0, 2, 3] ^= 1 << 31  # a second fault, on another replica and parameter
    assert vote(table, NAMES).faulty_replicas() == {0: ["c"], 2: ["b"]}


def test_two_replicas_and_ties_are_unresolved():
    pair = _table(2)
    pair[1, 0, 0] += 1
    verdict = vote(pair, NAMES)
    assert not verdict.resolved and verdict.faulty_replicas() == {} and verdict.suspects() == [0, 1]
    tie = _table(4)
    tie[2:, 0, 1] += 7  # replicas 2 and 3 agree with each other, not with 0 and 1
    verdict = vote(tie, NAMES)
    assert not verdict.resolved and verdict.unresolved[0].groups == [[0, 1], [2, 3]]
    split = _table(3)
    split[1, 2, 0] += 1
    split[2, 2, 0] += 2  # three different answers
    assert not vote(split, NAMES).resolved


def test_majority_of_five_with_two_faulty():
    table = _table(5)
    table[1, 0, 0] += 1
    table[4, 0, 0] += 2
    verdict = vote(table, NAMES)
    assert verdict.resolved and verdict.faulty_replicas() == {1: ["a"], 4: ["a"]}


def test_compare_runs_finds_the_replica_whose_digest_changed():
    first = _table(3)
    second = first.clone()
    second[1, 2, 2] += 1
    assert compare_runs(first, second) == [1]


def test_checkpoint_digest_round_trip_and_comparison():
    table = torch.randint(0, 2**32, (3, 4), dtype=torch.int64)
    text = encode_digest(NAMES, table)
    names_hash, decoded = decode_digest(text)
    assert torch.equal(decoded, table)
    assert differing_parameters(NAMES, table, text) == []
    changed = table.clone()
    changed[1, 0] ^= 8
    assert differing_parameters(NAMES, changed, text) == ["b"]
    assert differing_parameters(["a", "b", "x"], table, text) is None  # another model: not comparable
    assert decode_digest("not a digest") is None and decode_digest("lagoon-sdc/1:4:abc:123") is None
