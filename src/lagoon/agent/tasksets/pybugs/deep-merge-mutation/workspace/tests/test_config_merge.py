from config_merge import deep_merge


def test_flat():
    assert deep_merge({"a": 1, "b": 2}, {"b": 3, "c": 4}) == {"a": 1, "b": 3, "c": 4}


def test_replace_non_dict():
    assert deep_merge({"a": {"x": 1}}, {"a": 5}) == {"a": 5}
