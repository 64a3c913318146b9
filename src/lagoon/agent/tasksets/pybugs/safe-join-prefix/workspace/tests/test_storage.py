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
