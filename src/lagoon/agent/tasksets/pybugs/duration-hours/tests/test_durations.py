import pytest

from durations import parse_duration


def test_seconds_and_minutes():
    assert parse_duration("90s") == 90
    assert parse_duration("5m") == 300


def test_days():
    assert parse_duration("1d") == 86400


def test_invalid():
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_hours():
    assert parse_duration("2h") == 7200


def test_combined():
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1d2h3m4s") == 86400 + 7200 + 180 + 4
