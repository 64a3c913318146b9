from wrap import wrap


def test_wraps():
    assert wrap("the quick brown fox", 10) == ["the quick", "brown fox"]


def test_long_word():
    assert wrap("a extraordinarily b", 5) == ["a", "extraordinarily", "b"]


def test_empty():
    assert wrap("", 5) == []
