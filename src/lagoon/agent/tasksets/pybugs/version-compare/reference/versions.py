"""Comparing dotted version strings such as "1.10.2"."""


def parse(version):
    """The components of a dotted version ("1.10.2" -> ("1", "10", "2")); missing parts count as 0."""
    parts = version.strip().split(".")
    if not all(part.isdigit() for part in parts):
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in parts)


def is_newer(candidate, current):
    """Whether version `candidate` is strictly newer than `current` (numeric, component by component)."""
    a, b = parse(candidate), parse(current)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) > b + (0,) * (width - len(b))
