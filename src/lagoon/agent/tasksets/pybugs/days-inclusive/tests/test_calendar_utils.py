from datetime import date

import pytest

from calendar_utils import days_between, each_day


def test_reversed_range():
    with pytest.raises(ValueError):
        days_between(date(2024, 3, 2), date(2024, 3, 1))


def test_each_day_starts_at_start():
    assert each_day(date(2024, 2, 28), date(2024, 3, 1))[0] == date(2024, 2, 28)


def test_single_day():
    assert days_between(date(2024, 3, 1), date(2024, 3, 1)) == 1


def test_each_day_includes_end():
    assert each_day(date(2024, 2, 28), date(2024, 3, 1)) == [date(2024, 2, 28), date(2024, 2, 29), date(2024, 3, 1)]
