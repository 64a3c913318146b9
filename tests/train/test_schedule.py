"""Learning-rate schedules: warmup, the stable phase, decay to the floor, and config checks."""

from __future__ import annotations

import math

import pytest

from lagoon.configio import from_dict
from lagoon.errors import ConfigError
from lagoon.train.config import TrainConfig
from lagoon.train.schedule import lr_scale


def _config(**values) -> TrainConfig:
    return from_dict(TrainConfig, values, "train")


def test_wsd_warms_up_holds_then_decays_to_the_floor():
    config = _config(steps=100, schedule="wsd", warmup_fraction=0.1, decay_fraction=0.2, min_lr_ratio=0.1)
    scales = [lr_scale(config, step) for step in range(100)]
    assert scales[0] == pytest.approx(0.1) and scales[9] == 1.0
    assert all(s == 1.0 for s in scales[10:80])
    assert all(a > b for a, b in zip(scales[79:], scales[80:]))
    assert scales[-1] == pytest.approx(0.1)


def test_wsd_sqrt_decay_stays_below_linear():
    linear = _config(steps=50, warmup_fraction=0.0, decay_fraction=0.5)
    sqrt = _config(steps=50, warmup_fraction=0.0, decay_fraction=0.5, decay_shape="sqrt")
    for step in range(26, 49):
        assert lr_scale(sqrt, step) < lr_scale(linear, step)
    assert lr_scale(sqrt, 49) == pytest.approx(0.0, abs=1e-12)


def test_cosine_and_constant():
    cosine = _config(steps=101, schedule="cosine", warmup_fraction=0.0, min_lr_ratio=0.0)
    assert lr_scale(cosine, 0) == 1.0
    assert lr_scale(cosine, 50) == pytest.approx(0.5)
    assert lr_scale(cosine, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_scale(cosine, 25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    constant = _config(steps=10, schedule="constant", warmup_fraction=0.2)
    assert [lr_scale(constant, s) for s in range(10)] == [0.5] + [1.0] * 9


@pytest.mark.parametrize("values, field", [
    ({"steps": 0}, "train.steps"),
    ({"warmup_fraction": 0.9, "decay_fraction": 0.2}, "train.decay_fraction"),
    ({"schedule": "linear"}, "train.schedule"),
    ({"max_grad_norm": -1.0}, "train.max_grad_norm"),
    ({"keep_last": 0}, "train.keep_last"),
])
def test_bad_train_values_name_the_field(values, field):
    with pytest.raises(ConfigError) as info:
        _config(**values)
    assert str(info.value).startswith(field + ":")
