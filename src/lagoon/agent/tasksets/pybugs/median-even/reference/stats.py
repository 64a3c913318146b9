"""Descriptive statistics."""


def median(values):
    """The median of `values` (the mean of the two middle values when there is an even number)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median of no data")
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def spread(values):
    """Largest minus smallest value."""
    return max(values) - min(values)
