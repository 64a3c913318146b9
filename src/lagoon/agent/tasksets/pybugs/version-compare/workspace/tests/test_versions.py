import pytest

from versions import is_newer


def test_simple():
    assert is_newer("1.2.4", "1.2.3")
    assert not is_newer("1.2.3", "1.2.3")


def test_missing_parts_are_zero():
    assert not is_newer("2.0", "2.0.0")
    assert is_newer("2.0.1", "2")


def test_invalid():
    with pytest.raises(ValueError):
        is_newer("1.x", "1.0")
