"""URL slugs."""

import re
import unicodedata


def slugify(title: str, separator: str = "-") -> str:
    """Turn a title into a URL slug: lowercase ASCII words joined by `separator`.

    Accented letters are transliterated to their base letter ("Café" -> "cafe"); any other character
    that is not a letter or digit separates words.
    """
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii").lower()
    words = re.findall(r"[a-z0-9]+", text)
    return separator.join(words)
