import pytest

from batching import batched_sum, chunks


def test_even_split():
    assert chunks([1, 2, 3, 4], 2) == [[1, 2], [3, 4]]


def test_size_must_be_positive():
    with pytest.raises(ValueError):
        chunks([1], 0)


def test_empty():
    assert chunks([], 3) == []
