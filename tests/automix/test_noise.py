"""Seed-to-seed noise at a fixed mixture, and the sweep's signal-to-noise it implies."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from lagoon.automix.noise import NOISE_FILE, signal_to_noise
from tests.automix.conftest import automix_config, write_config
from tests.conftest import run_lagoon


def test_the_spearman_ceiling_is_what_a_perfect_surrogate_reaches_against_noisy_losses():
    rng = np.random.default_rng(0)
    truth_N = rng.normal(2.0, 0.1, 20000)
    for noise_sd in (0.01, 0.05, 0.1):
        measured_N = truth_N + rng.normal(0, noise_sd, len(truth_N))
        figures = signal_to_noise(measured_N, noise_sd)
        assert figures["spearman_ceiling"] == pytest.approx(spearmanr(truth_N, measured_N).statistic, abs=0.01)
        assert figures["snr"] == pytest.approx(0.01 / noise_sd ** 2, rel=0.05)
    assert signal_to_noise(truth_N, 0.0)["spearman_ceiling"] == pytest.approx(1.0)
    assert signal_to_noise(truth_N, 0.0)["snr"] == math.inf
    assert signal_to_noise(truth_N, 1.0)["spearman_ceiling"] == 0.0  # noise above the spread: nothing to rank


@pytest.mark.timeout(600)
def test_noise_command_trains_the_natural_mix_at_other_seeds(shard_dir, tmp_path):
    config = write_config(tmp_path / "automix.toml", automix_config(shard_dir))
    out = tmp_path / "out"
    result = run_lagoon("automix", "noise", str(config), "--out", str(out), "--seeds", "2", "--no-progress",
                        timeout=500)
    assert result.returncode == 0, result.stderr
    assert "seed-to-seed sd" in result.stdout
    summary = json.loads((out / NOISE_FILE).read_text())
    assert summary["seeds"] == [1, 2] and not summary["includes_proxy_0"]
    plan = json.loads((out / "plan.json").read_text())
    for seed in (1, 2):
        run = json.loads((out / "noise" / f"seed{seed}" / "automix_result.json").read_text())
        assert run["tokens"] == plan["proxy_tokens"]
    configs = [(out / "noise" / f"seed{s}" / "config.toml").read_text() for s in (1, 2)]
    assert configs[0] != configs[1]  # the seeds differ, nothing else
    for group, values in summary["bpb"].items():
        assert len(values) == 2 and summary["noise_sd"][group] > 0
        assert summary["noise_sd"][group] == pytest.approx(np.std(values, ddof=1))
