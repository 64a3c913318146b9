"""Statistics over CSV columns."""

import csv
from statistics import mean


def column_mean(path, column):
    """Mean of numeric `column` of a CSV file with a header row.

    Files exported by spreadsheet programs often start with a UTF-8 byte-order mark; they work too.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} has no data rows")
    if column not in rows[0]:
        raise KeyError(column)
    return mean(float(row[column]) for row in rows)
