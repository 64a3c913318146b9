"""Counting lines of code."""

import os


def count_lines(root, extension=".py"):
    """Total number of lines in every file under `root` (recursively) whose name ends with `extension`."""
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            if name.endswith(extension):
                with open(os.path.join(directory, name), encoding="utf-8") as handle:
                    total += sum(1 for _ in handle)
    return total
