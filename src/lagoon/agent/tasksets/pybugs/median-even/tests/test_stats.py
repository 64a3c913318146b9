import pytest

from stats import median, spread


def test_odd():
    assert median([3, 1, 2]) == 2


def test_empty():
    with pytest.raises(ValueError):
        median([])


def test_spread():
    assert spread([4, 9, 1]) == 8


def test_even():
    assert median([1, 2, 3, 4]) == 2.5
    assert median([10, 2]) == 6
