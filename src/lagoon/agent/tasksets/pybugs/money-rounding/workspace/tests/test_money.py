import pytest

from money import round_price, split_bill


def test_whole_and_plain_amounts():
    assert round_price(3) == "3.00"
    assert round_price(2.5) == "2.50"
    assert round_price(1.234) == "1.23"


def test_split_bill():
    assert split_bill(10, 4) == ["2.50"] * 4


def test_split_needs_people():
    with pytest.raises(ValueError):
        split_bill(10, 0)
