"""Mixture files and checks."""

from __future__ import annotations

import pytest

from lagoon.data import Mixture
from lagoon.errors import ConfigError, LagoonError

LEAF_TOKENS = {"code/q1": 1000, "code/q2": 500, "math/q1": 0}


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_save_and_load_round_trip(tmp_path, suffix):
    mixture = Mixture({"code/q1": 0.75, "code/q2": 0.25}, name="sweep 3", note="from automix")
    path = mixture.save(tmp_path / f"mix{suffix}")
    loaded = Mixture.load(path)
    assert loaded == mixture and loaded.name == "sweep 3" and loaded.note == "from automix"
    if suffix == ".toml":
        assert '"code/q1" = 0.75' in path.read_text()


def test_validation_refuses_bad_mixtures():
    class Shards:
        leaf_tokens = LEAF_TOKENS

    Mixture({"code/q1": 0.5, "code/q2": 0.5}).validate(Shards())
    Mixture({"code/q1": 0.5, "code/q2": 0.5 + 5e-7}).validate(Shards())  # within 1e-6
    cases = [({"code/q1": 1.2, "code/q2": -0.2}, "mixture.code/q2: weight must be a finite number >= 0"),
             ({"code/q1": 0.5, "code/q2": 0.4}, "sum to 0.9, not 1"),
             ({"code/q1": 0.5, "web/q1": 0.5}, "mixture.web/q1: unknown leaf"),
             ({"code/q1": 0.5, "math/q1": 0.5}, "mixture.math/q1: has a positive weight but no tokens"),
             ({}, "has no weights")]
    for weights, message in cases:
        with pytest.raises(ConfigError) as caught:
            Mixture(weights).validate(Shards())
        assert message in str(caught.value) and "\n" not in str(caught.value)


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Mixture.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[weights]\ncode = 'a lot'\n")
    with pytest.raises(ConfigError, match="needs a \\[weights\\] table"):
        Mixture.load(bad)


def test_expected_epochs_and_repetition_check():
    mixture = Mixture({"code/q1": 0.5, "code/q2": 0.5})
    assert mixture.expected_epochs(LEAF_TOKENS, 4000) == {"code/q1": 2.0, "code/q2": 4.0, "math/q1": 0.0}
    mixture.check_repetition(LEAF_TOKENS, 4000, repetition_cap=4)
    with pytest.raises(LagoonError, match="read leaf code/q2 5.00 times, over the repetition cap of 4"):
        mixture.check_repetition(LEAF_TOKENS, 5000, repetition_cap=4)
