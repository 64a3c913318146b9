import pytest

from units import celsius_to_fahrenheit, fahrenheit_to_celsius, kelvin_to_celsius


def test_celsius_to_fahrenheit():
    assert celsius_to_fahrenheit(100) == 212


def test_kelvin():
    assert kelvin_to_celsius(273.15) == 0


def test_fahrenheit_to_celsius():
    assert fahrenheit_to_celsius(212) == pytest.approx(100)
    assert fahrenheit_to_celsius(32) == pytest.approx(0)


def test_round_trip():
    for celsius in (-40, 0, 37, 100):
        assert fahrenheit_to_celsius(celsius_to_fahrenheit(celsius)) == pytest.approx(celsius)
