import pytest

from csvstats import column_mean


def test_mean(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("name,price\na,1\nb,3\n")
    assert column_mean(path, "price") == 2


def test_missing_column(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("name,price\na,1\n")
    with pytest.raises(KeyError):
        column_mean(path, "qty")


def test_no_rows(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("name,price\n")
    with pytest.raises(ValueError):
        column_mean(path, "price")
