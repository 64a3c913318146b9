from intervals import merge


def test_overlapping():
    assert merge([(1, 4), (2, 6)]) == [(1, 6)]


def test_disjoint_are_sorted():
    assert merge([(8, 9), (1, 2)]) == [(1, 2), (8, 9)]


def test_nested():
    assert merge([(1, 10), (2, 3)]) == [(1, 10)]


def test_empty():
    assert merge([]) == []


def test_touching():
    assert merge([(1, 3), (3, 5)]) == [(1, 5)]


def test_touching_chain():
    assert merge([(5, 7), (1, 3), (3, 5), (9, 9)]) == [(1, 7), (9, 9)]
