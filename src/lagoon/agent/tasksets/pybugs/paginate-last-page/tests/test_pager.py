import pytest

from pager import get_page, page_count


def test_exact_multiple():
    assert page_count(20, 10) == 2


def test_first_page():
    assert get_page(list(range(25)), 1, 10) == list(range(10))


def test_pages_start_at_one():
    with pytest.raises(ValueError):
        get_page([1, 2, 3], 0, 10)


def test_no_items():
    assert page_count(0, 10) == 0


def test_partial_last_page():
    assert page_count(21, 10) == 3
    assert get_page(list(range(21)), 3, 10) == [20]


def test_fewer_items_than_a_page():
    assert page_count(3, 10) == 1
    assert get_page(["a", "b", "c"], 1, 10) == ["a", "b", "c"]
