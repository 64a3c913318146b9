"""Greedy word wrapping."""


def wrap(text, width):
    """Split `text` into lines of at most `width` characters, breaking between words (greedily).
    A word longer than `width` gets a line of its own."""
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if len(candidate) <= width:
            current = candidate
        else:
            if current:
                lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines
