import pytest

from settings import parse


def test_basic():
    assert parse("name = lagoon\nport=8080") == {"name": "lagoon", "port": "8080"}


def test_comments_and_blank_lines():
    assert parse("# header\n\nkey = value\n") == {"key": "value"}


def test_missing_equals():
    with pytest.raises(ValueError, match="line 2"):
        parse("a = 1\nnonsense")


def test_value_with_equals():
    assert parse("url = https://example.com/?a=1&b=2") == {"url": "https://example.com/?a=1&b=2"}


def test_empty_value_and_trailing_equals():
    assert parse("flag =\nexpr = x==y") == {"flag": "", "expr": "x==y"}
