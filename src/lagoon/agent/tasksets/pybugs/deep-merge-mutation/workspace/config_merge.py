"""Merging layered configuration dictionaries."""


def deep_merge(base, override):
    """A new dict: `base` updated recursively with `override` (nested dicts are merged, other values
    replaced). Neither argument is modified."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key].update(value)
        else:
            result[key] = value
    return result
