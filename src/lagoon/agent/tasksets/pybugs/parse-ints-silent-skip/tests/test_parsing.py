from parsing import parse_ints


def test_parse():
    assert parse_ints("1, 2,3 , -4") == [1, 2, 3, -4]


def test_blank():
    assert parse_ints("  ") == []


import pytest


def test_bad_item_is_named():
    with pytest.raises(ValueError, match="'x'"):
        parse_ints("1, 2, x, 4")


def test_empty_item_is_an_error():
    with pytest.raises(ValueError):
        parse_ints("1,,2")
