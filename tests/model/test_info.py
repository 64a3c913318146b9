"""`lagoon model info` counts published shapes without allocating weights."""

from __future__ import annotations

import re

import pytest

from lagoon.model import count_parameters, preset_config
from tests.conftest import run_lagoon


@pytest.mark.parametrize("preset, total, active", [("laguna-xs2", 33.44e9, 3.02e9), ("laguna-m1", 225.8e9, 23.4e9)])
def test_published_shapes_within_one_percent(preset, total, active):
    counts = count_parameters(preset_config(preset))
    assert abs(counts.total / total - 1) < 0.01
    assert abs(counts.active / active - 1) < 0.01
    result = run_lagoon("model", "info", preset)
    assert result.returncode == 0, result.stderr
    printed_total = float(re.search(r"total parameters\s*│\s*([\d.]+)B", result.stdout).group(1))
    printed_active = float(re.search(r"active parameters\s*│\s*([\d.]+)B", result.stdout).group(1))
    assert abs(printed_total * 1e9 / total - 1) < 0.01 and abs(printed_active * 1e9 / active - 1) < 0.01


def test_small_preset_is_in_its_documented_range():
    counts = count_parameters(preset_config("small"))
    assert 30e6 <= counts.total <= 100e6
