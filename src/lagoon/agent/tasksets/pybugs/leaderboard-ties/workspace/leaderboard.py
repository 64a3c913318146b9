"""Leaderboard ranking."""

from dataclasses import dataclass


@dataclass
class Entry:
    player: str
    score: int


def ranking(entries):
    """Entries from highest to lowest score. Entries with equal scores keep the order in which they were
    submitted (the earlier submission ranks higher)."""
    return sorted(entries, key=lambda entry: entry.score)[::-1]


def top(entries, n):
    """Names of the `n` best players."""
    return [entry.player for entry in ranking(entries)[:n]]
