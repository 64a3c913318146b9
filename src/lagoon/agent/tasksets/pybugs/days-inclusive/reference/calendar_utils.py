"""Date ranges for events (both ends included)."""

from datetime import timedelta


def days_between(start, end):
    """Number of days from `start` to `end`, counting both ends (an event that starts and ends on the same
    day lasts 1 day)."""
    if end < start:
        raise ValueError("end is before start")
    return (end - start).days + 1


def each_day(start, end):
    """Every date from `start` to `end`, both included."""
    return [start + timedelta(days=offset) for offset in range(days_between(start, end))]
