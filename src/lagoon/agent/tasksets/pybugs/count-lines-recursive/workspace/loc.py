"""Counting lines of code."""

import os


def count_lines(root, extension=".py"):
    """Total number of lines in every file under `root` (recursively) whose name ends with `extension`."""
    total = 0
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isfile(path) and name.endswith(extension):
            with open(path, encoding="utf-8") as handle:
                total += sum(1 for _ in handle)
    return total
