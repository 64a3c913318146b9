"""Word frequencies."""

import re
from collections import Counter


def top_words(text, n=3):
    """The `n` most common words of `text` as (word, count) pairs.

    Words are compared case-insensitively and reported in lowercase; ties are broken alphabetically.
    """
    counts = Counter(re.findall(r"[A-Za-z']+", text))
    return sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))[:n]
