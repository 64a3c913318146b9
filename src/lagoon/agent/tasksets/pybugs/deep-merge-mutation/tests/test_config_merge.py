from config_merge import deep_merge


def test_flat():
    assert deep_merge({"a": 1, "b": 2}, {"b": 3, "c": 4}) == {"a": 1, "b": 3, "c": 4}


def test_replace_non_dict():
    assert deep_merge({"a": {"x": 1}}, {"a": 5}) == {"a": 5}


def test_nested_levels_are_merged():
    base = {"db": {"host": "localhost", "pool": {"size": 5, "timeout": 30}}}
    merged = deep_merge(base, {"db": {"pool": {"size": 10}}})
    assert merged == {"db": {"host": "localhost", "pool": {"size": 10, "timeout": 30}}}


def test_inputs_are_not_modified():
    base = {"db": {"host": "localhost", "pool": {"size": 5}}}
    override = {"db": {"host": "remote"}}
    deep_merge(base, override)
    assert base == {"db": {"host": "localhost", "pool": {"size": 5}}}
    assert override == {"db": {"host": "remote"}}
