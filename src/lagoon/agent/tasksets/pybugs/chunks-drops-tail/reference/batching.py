"""Batching sequences."""


def chunks(items, size):
    """Consecutive lists of `size` items; the last one may be shorter."""
    if size <= 0:
        raise ValueError("size must be positive")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def batched_sum(items, size):
    """The sum of every chunk."""
    return [sum(chunk) for chunk in chunks(items, size)]
