import pytest

from roman import from_roman, to_roman


def test_additive():
    assert to_roman(3) == "III"
    assert to_roman(2023) == "MMXXIII"


def test_from_roman():
    assert from_roman("MCMXCIV") == 1994


def test_range():
    with pytest.raises(ValueError):
        to_roman(0)


def test_subtractive():
    assert to_roman(4) == "IV"
    assert to_roman(9) == "IX"
    assert to_roman(1994) == "MCMXCIV"


def test_round_trip():
    assert all(from_roman(to_roman(n)) == n for n in range(1, 400))
