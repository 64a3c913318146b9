"""Parsing human-written durations such as "1h30m" or "45s"."""

import re

_UNITS = {"d": 86400, "h": 60, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([dhms])")


def parse_duration(text):
    """Seconds in a duration written as numbers with units d, h, m, s ("1h30m", "90s", "2d")."""
    text = text.strip().lower()
    if not text or _PART.sub("", text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(amount) * _UNITS[unit] for amount, unit in _PART.findall(text))
