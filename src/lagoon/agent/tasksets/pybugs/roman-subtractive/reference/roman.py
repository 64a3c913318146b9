"""Roman numerals."""

_TABLE = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"), (40, "XL"),
          (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
_VALUES = {"M": 1000, "D": 500, "C": 100, "L": 50, "X": 10, "V": 5, "I": 1}


def to_roman(number):
    """The Roman numeral of 1 <= number <= 3999 in subtractive notation (4 = IV, 9 = IX, 40 = XL, 90 = XC,
    400 = CD, 900 = CM)."""
    if not 1 <= number <= 3999:
        raise ValueError("Roman numerals cover 1 to 3999")
    parts = []
    for value, symbol in _TABLE:
        count, number = divmod(number, value)
        parts.append(symbol * count)
    return "".join(parts)


def from_roman(numeral):
    """The value of a Roman numeral (subtractive notation understood)."""
    total = 0
    for index, symbol in enumerate(numeral):
        value = _VALUES[symbol]
        if index + 1 < len(numeral) and _VALUES[numeral[index + 1]] > value:
            total -= value
        else:
            total += value
    return total
