"""Bounding off-policyness: admission control at the actors, a last-resort drop at the trainer.

A trajectory's **staleness** is the trainer's version when it trains on it minus the oldest policy
version that sampled any of its turns. lagoon bounds it by η = ``trainer.max_staleness``.

**Admission control** (AReaL, Fu et al. 2025, arXiv:2505.24298, §5.1; the same rule drives SkyRL's and
verl's fully-async modes). With the trainer at version v and consuming B groups per version, at most

    (η + v + 1) · B − (accepted + running)

new rollouts may start, where *accepted* counts every group ever accepted. The trainer has consumed
v·B of those, so the rule says: **at most (η + 1)·B groups may be outstanding** — written to the table
but not yet consumed, or still running. A group started now is then consumed at the latest η versions
later. lagoon's actors are separate processes without a shared counter, so each of the N actors holds
⌊(η + 1)·B / N⌋ of that budget (at least 1) and counts its own outstanding groups:

    outstanding_i = appended_i − consumed_i(v) + running_i

``appended_i`` is what the actor has written (recounted from the table after a restart), and
``consumed_i(v)`` comes from the trainer's progress in the table's properties: groups of actor i the
trainer had trained on (or dropped) when it published version v. Groups an actor filters out (zero
variance, errors) are never appended and free their slot at once. η = 0 degenerates to synchronous RL:
no episode starts until the trainer has consumed everything outstanding and published new weights.

**The trainer's drop** is the last resort, for data the rule could not hold back (a trainer restarted
from an older checkpoint, actors started with a different B, a hand-written append): groups staler than
η are dropped and counted; the staleness histogram of every step goes to the metrics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


def actor_budget(max_staleness: int, groups_per_step: int, num_actors: int) -> int:
    """Outstanding groups one actor may hold: its 1/N share of (η + 1)·B, at least one."""
    return max(1, ((max_staleness + 1) * groups_per_step) // num_actors)


def admissible(budget: int, appended: int, consumed: int, running: int) -> int:
    """How many new groups the actor may start now (0 when it must wait for the trainer)."""
    outstanding = max(0, appended - consumed) + running
    return max(0, budget - outstanding)


def staleness(trainer_version: int, policy_version: int) -> int:
    """Versions between the sampling policy and the trainer (never negative: a trainer restarted from an
    older checkpoint can meet data from versions it will produce again)."""
    return max(0, trainer_version - policy_version)


@dataclass
class StalenessFilter:
    """The trainer-side bound: keep groups with staleness ≤ η, drop (and count) the rest."""

    max_staleness: int

    def admit(self, trainer_version: int, oldest_policy_version: int) -> bool:
        return staleness(trainer_version, oldest_policy_version) <= self.max_staleness


def histogram(values: list[int]) -> dict[str, int]:
    """{staleness: count} with string keys (JSON-friendly), in increasing order."""
    counts = Counter(values)
    return {str(k): counts[k] for k in sorted(counts)}
