import pytest

from batching import batched_sum, chunks


def test_even_split():
    assert chunks([1, 2, 3, 4], 2) == [[1, 2], [3, 4]]


def test_size_must_be_positive():
    with pytest.raises(ValueError):
        chunks([1], 0)


def test_empty():
    assert chunks([], 3) == []


def test_short_last_chunk():
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_fewer_items_than_size():
    assert batched_sum([1, 2], 5) == [3]
