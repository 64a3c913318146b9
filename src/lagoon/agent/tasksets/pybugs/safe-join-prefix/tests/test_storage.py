import pytest

from storage import UnsafePath, safe_join


def test_plain_join():
    assert safe_join("/srv/data", "a/b.txt") == "/srv/data/a/b.txt"


def test_normalizes_inside_root():
    assert safe_join("/srv/data", "a/../b.txt") == "/srv/data/b.txt"


def test_parent_escape():
    with pytest.raises(UnsafePath):
        safe_join("/srv/data", "../etc/passwd")


def test_absolute_path():
    with pytest.raises(UnsafePath):
        safe_join("/srv/data", "/etc/passwd")


def test_sibling_with_same_prefix():
    with pytest.raises(UnsafePath):
        safe_join("/srv/data", "../data-private/keys.txt")


def test_sibling_with_trailing_slash_root():
    with pytest.raises(UnsafePath):
        safe_join("/srv/data/", "../data2/x")
    assert safe_join("/srv/data/", "x") == "/srv/data/x"
