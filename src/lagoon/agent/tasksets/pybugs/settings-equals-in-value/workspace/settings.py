"""A minimal settings-file parser."""


def parse(text):
    """Parse `key = value` lines into a dict.

    Blank lines and lines starting with '#' are ignored; keys and values are stripped of surrounding
    whitespace; a value may itself contain '='.
    """
    result = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"line {number}: expected key = value")
        key, value = line.split("=")[:2]
        result[key.strip()] = value.strip()
    return result
