"""Closed integer intervals."""


def merge(intervals):
    """Merge overlapping or touching closed intervals (start, end); returns them sorted by start."""
    result = []
    for start, end in sorted(intervals):
        if result and start <= result[-1][1]:
            result[-1][1] = max(result[-1][1], end)
        else:
            result.append([start, end])
    return [tuple(interval) for interval in result]
