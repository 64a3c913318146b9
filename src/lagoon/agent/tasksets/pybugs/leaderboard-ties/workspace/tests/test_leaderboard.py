from leaderboard import Entry, ranking, top


def test_highest_first():
    entries = [Entry("a", 1), Entry("b", 9), Entry("c", 5)]
    assert [e.player for e in ranking(entries)] == ["b", "c", "a"]


def test_top_n():
    entries = [Entry("a", 1), Entry("b", 9), Entry("c", 5)]
    assert top(entries, 2) == ["b", "c"]
