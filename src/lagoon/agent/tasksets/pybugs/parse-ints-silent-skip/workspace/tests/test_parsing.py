from parsing import parse_ints


def test_parse():
    assert parse_ints("1, 2,3 , -4") == [1, 2, 3, -4]


def test_blank():
    assert parse_ints("  ") == []
