from search import find_first


def test_found():
    assert find_first([1, 3, 5, 7], 5) == 2


def test_absent():
    assert find_first([1, 3, 5, 7], 4) == -1
    assert find_first([1, 3, 5, 7], 9) == -1


def test_empty():
    assert find_first([], 1) == -1
