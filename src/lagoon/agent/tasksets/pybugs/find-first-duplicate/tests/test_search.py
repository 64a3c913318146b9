from search import find_first


def test_found():
    assert find_first([1, 3, 5, 7], 5) == 2


def test_absent():
    assert find_first([1, 3, 5, 7], 4) == -1
    assert find_first([1, 3, 5, 7], 9) == -1


def test_empty():
    assert find_first([], 1) == -1


def test_first_of_duplicates():
    assert find_first([1, 2, 2, 2, 3], 2) == 1


def test_all_equal():
    assert find_first([4] * 9, 4) == 0
