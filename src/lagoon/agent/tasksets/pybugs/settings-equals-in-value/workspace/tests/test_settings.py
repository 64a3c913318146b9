import pytest

from settings import parse


def test_basic():
    assert parse("name = lagoon\nport=8080") == {"name": "lagoon", "port": "8080"}


def test_comments_and_blank_lines():
    assert parse("# header\n\nkey = value\n") == {"key": "value"}


def test_missing_equals():
    with pytest.raises(ValueError, match="line 2"):
        parse("a = 1\nnonsense")
