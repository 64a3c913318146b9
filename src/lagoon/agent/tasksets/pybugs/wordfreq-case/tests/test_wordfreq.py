from wordfreq import top_words


def test_counts():
    assert top_words("a b a c a b", 2) == [("a", 3), ("b", 2)]


def test_ties_alphabetical():
    assert top_words("pear apple fig", 3) == [("apple", 1), ("fig", 1), ("pear", 1)]


def test_case_insensitive():
    assert top_words("The cat saw the dog. THE end.", 1) == [("the", 3)]


def test_reported_lowercase():
    assert top_words("Fig fig FIG apple", 2) == [("fig", 3), ("apple", 1)]
