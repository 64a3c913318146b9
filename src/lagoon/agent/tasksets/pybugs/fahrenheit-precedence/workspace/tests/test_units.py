import pytest

from units import celsius_to_fahrenheit, fahrenheit_to_celsius, kelvin_to_celsius


def test_celsius_to_fahrenheit():
    assert celsius_to_fahrenheit(100) == 212


def test_kelvin():
    assert kelvin_to_celsius(273.15) == 0
