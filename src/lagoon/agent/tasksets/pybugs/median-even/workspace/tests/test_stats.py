import pytest

from stats import median, spread


def test_odd():
    assert median([3, 1, 2]) == 2


def test_empty():
    with pytest.raises(ValueError):
        median([])


def test_spread():
    assert spread([4, 9, 1]) == 8
