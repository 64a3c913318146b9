from leaderboard import Entry, ranking, top


def test_highest_first():
    entries = [Entry("a", 1), Entry("b", 9), Entry("c", 5)]
    assert [e.player for e in ranking(entries)] == ["b", "c", "a"]


def test_top_n():
    entries = [Entry("a", 1), Entry("b", 9), Entry("c", 5)]
    assert top(entries, 2) == ["b", "c"]


def test_ties_keep_submission_order():
    entries = [Entry("ann", 5), Entry("bob", 5), Entry("cid", 3)]
    assert top(entries, 2) == ["ann", "bob"]


def test_many_ties():
    entries = [Entry(name, score) for name, score in [("p", 2), ("q", 7), ("r", 2), ("s", 7), ("t", 2)]]
    assert [e.player for e in ranking(entries)] == ["q", "s", "p", "r", "t"]
