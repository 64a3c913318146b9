"""The vote: compare every replica's digest of every parameter and name who disagrees with the majority.

Input: digests [W, P, L] gathered over the replicate group (W replicas, P parameters, L lanes). For each
parameter the replicas split into groups of identical digests. A group holding a strict majority
(more than W/2 replicas) is taken as the truth and every replica outside it is *faulty* for that
parameter. Without a strict majority — two replicas that disagree, a 2–2 tie, a three-way split — the
parameter is *unresolved*: the vote alone cannot say who is right, and the checker escalates
(`lagoon.sdc.checker`).

The common case (all equal) costs one comparison of the whole table; only disagreeing parameters are
examined one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class ParameterVote:
    """How the replicas split on one parameter."""

    index: int
    name: str
    groups: list[list[int]]
    """Replica positions (in the replicate group) sharing one digest, largest group first."""
    majority: list[int] | None
    """The strict-majority group, or None when there is none."""

    @property
    def faulty(self) -> list[int]:
        """Replica positions outside the majority (empty when unresolved)."""
        if self.majority is None:
            return []
        return sorted(r for group in self.groups for r in group if r not in self.majority)


@dataclass
class Verdict:
    """The outcome of one vote."""

    replicas: int
    votes: list[ParameterVote] = field(default_factory=list)
    """One entry per parameter whose replicas disagree (empty when all agree)."""

    @property
    def agreed(self) -> bool:
        return not self.votes

    @property
    def resolved(self) -> bool:
        """Every disagreement has a strict majority (so the faulty replicas are known)."""
        return all(vote.majority is not None for vote in self.votes)

    @property
    def unresolved(self) -> list[ParameterVote]:
        return [vote for vote in self.votes if vote.majority is None]

    def faulty_replicas(self) -> dict[int, list[str]]:
        """Replica position → names of the parameters it got wrong (majority-resolved votes only)."""
        out: dict[int, list[str]] = {}
        for vote in self.votes:
            for replica in vote.faulty:
                out.setdefault(replica, []).append(vote.name)
        return dict(sorted(out.items()))

    def suspects(self) -> list[int]:
        """Replicas involved in any disagreement: the faulty ones, or everyone in an unresolved split."""
        found: set[int] = set(self.faulty_replicas())
        for vote in self.unresolved:
            found.update(r for group in vote.groups for r in group)
        return sorted(found)


def vote(digests_WPL: torch.Tensor, names: Sequence[str]) -> Verdict:
    """Compare replicas per parameter; see the module docstring."""
    assert digests_WPL.dim() == 3 and digests_WPL.shape[1] == len(names), (tuple(digests_WPL.shape), len(names))
    replicas = digests_WPL.shape[0]
    verdict = Verdict(replicas=replicas)
    if replicas <= 1:
        return verdict
    differs_P = (digests_WPL != digests_WPL[:1]).any(dim=2).any(dim=0)
    for index in differs_P.nonzero().flatten().tolist():
        rows = [tuple(row) for row in digests_WPL[:, index, :].tolist()]
        groups: dict[tuple[int, ...], list[int]] = {}
        for replica, row in enumerate(rows):
            groups.setdefault(row, []).append(replica)
        ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0]))
        majority = ordered[0] if 2 * len(ordered[0]) > replicas else None
        verdict.votes.append(ParameterVote(index=index, name=names[index], groups=ordered, majority=majority))
    return verdict


def consensus(digests_WPL: torch.Tensor, verdict: Verdict) -> torch.Tensor | None:
    """[P, L]: every parameter's agreed or strict-majority digest; None if some parameter has no majority."""
    if not verdict.resolved:
        return None
    table = digests_WPL[0].clone()
    for parameter_vote in verdict.votes:
        table[parameter_vote.index] = digests_WPL[parameter_vote.majority[0], parameter_vote.index]
    return table


def compare_runs(first_WPL: torch.Tensor, second_WPL: torch.Tensor) -> list[int]:
    """Replicas whose digests changed between two computations of the same state (a recompute)."""
    changed = (first_WPL != second_WPL).any(dim=2).any(dim=1)
    return changed.nonzero().flatten().tolist()
