from wrap import wrap


def test_wraps():
    assert wrap("the quick brown fox", 10) == ["the quick", "brown fox"]


def test_long_word():
    assert wrap("a extraordinarily b", 5) == ["a", "extraordinarily", "b"]


def test_empty():
    assert wrap("", 5) == []


def test_exact_width_fits():
    assert wrap("aaa bbb ccc", 7) == ["aaa bbb", "ccc"]


def test_single_word_of_exact_width():
    assert wrap("abcde fg", 5) == ["abcde", "fg"]
