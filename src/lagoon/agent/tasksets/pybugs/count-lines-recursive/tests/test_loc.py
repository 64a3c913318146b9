from loc import count_lines


def test_flat(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\ny = 2\n")
    (tmp_path / "b.py").write_text("z = 3\n")
    assert count_lines(tmp_path) == 3


def test_other_extensions_ignored(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("one\ntwo\n")
    assert count_lines(tmp_path) == 1
    assert count_lines(tmp_path, ".txt") == 2


def test_recursive(tmp_path):
    (tmp_path / "top.py").write_text("a = 1\n")
    nested = tmp_path / "src" / "pkg"
    nested.mkdir(parents=True)
    (nested / "module.py").write_text("b = 2\nc = 3\n")
    (nested / "data.json").write_text("{}\n")
    assert count_lines(tmp_path) == 3
