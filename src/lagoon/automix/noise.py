"""How noisy a proxy's per-group loss is, and how that compares with what the sweep measures.

Noise: proxies trained at one fixed mixture (the natural one) that differ only in their seeds — training
seed (initialisation) and data seed (document and window order) both set to s = 1 … n; proxy 0 of the
sweep is the same mixture at seed 0 and joins them when the sweep includes the natural mix. The standard
deviation of a group's held-out bits per byte over these runs is the seed-to-seed noise σ_noise.

Signal: the standard deviation of the group's loss across the sweep's mixtures, σ_sweep. The sweep's
signal-to-noise is ``SNR = (σ_sweep² − σ_noise²) / σ_noise²``: the variance the mixtures explain over
the variance the seeds add. It bounds what any surrogate can reach: a perfect one (it knows the noise-free
loss of every mixture) still correlates with the measured losses only as ``r = sqrt(1 − σ_noise² /
σ_sweep²)``, and for normal errors Spearman's ρ = (6/π)·asin(r/2) (Pearson 1907; Kendall & Stuart, vol. 2,
§31.19). A surrogate whose cross-validated ρ is far below that ceiling is limited by its form; one near it,
by the noise, which only more or less noisy proxies can move. The noise is measured at one mixture and
assumed alike at the others (stated in the report).

    OUT/noise/seedS/     the noise runs (ordinary proxy run directories)
    OUT/noise.json       their per-group losses and the figures above

Shape legend: S seeds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lagoon.automix.runs import RunSpec
from lagoon.automix.sweep import EVENTS_FILE, Plan, proxy_dir, run_specs, write_json

NOISE_FILE = "noise.json"


def noise_dir(out_dir: Path, seed: int) -> Path:
    return out_dir / "noise" / f"seed{seed}"


def noise_specs(out_dir: Path, plan: Plan, proxy_config: dict[str, Any], params: dict[str, int],
                seeds: int) -> list[RunSpec]:
    """Proxies at the natural mixture with training and data seeds base + 1 … base + `seeds`."""
    specs = []
    base = int(proxy_config["train"].get("seed", 0))
    for offset in range(1, seeds + 1):
        config = json.loads(json.dumps(proxy_config))
        config["data"]["weights"] = {leaf: float(w) for leaf, w in zip(plan.space.leaves, plan.space.prior) if w > 0}
        config["data"]["mixture"] = ""
        config["train"]["seed"] = base + offset
        config["data"]["seed"] = int(config["data"].get("seed", 0)) + offset
        specs.append(RunSpec(f"noise seed {base + offset}", str(noise_dir(out_dir, base + offset)), config,
                             plan.leaf_fraction, params))
    return specs


def run_noise(out_dir: Path, plan: Plan, proxy_config: dict[str, Any], params: dict[str, int], automix: Any,
              show_progress: bool = True) -> dict[str, Any] | None:
    """Train the missing noise runs and write OUT/noise.json; None when ``noise_seeds`` is 0."""
    if automix.noise_seeds == 0:
        return None
    specs = noise_specs(out_dir, plan, proxy_config, params, automix.noise_seeds)
    results = run_specs(specs, automix, "noise runs", out_dir / EVENTS_FILE, show_progress)
    runs = [results[spec.run_dir] for spec in specs]
    natural = None
    if len(plan.mixtures) and np.allclose(plan.mixtures[0], plan.space.prior):
        from lagoon.automix.backends import read_result

        natural = read_result(proxy_dir(out_dir, 0))  # proxy 0: the same mixture at the sweep's seed
    samples = ([natural] if natural is not None else []) + runs
    summary = {
        "mixture": "natural", "seeds": [spec.config["train"]["seed"] for spec in specs],
        "includes_proxy_0": natural is not None,
        "bpb": {group: [float(r["bpb"][group]) for r in samples] for group in samples[0]["bpb"]},
        "tokens": sum(r["tokens"] for r in runs), "flops": sum(r["flops"] for r in runs),
    }
    summary["noise_sd"] = {group: float(np.std(values, ddof=1)) for group, values in summary["bpb"].items()}
    write_json(out_dir / NOISE_FILE, summary)
    return summary


def read_noise(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / NOISE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def signal_to_noise(sweep_bpb_N: np.ndarray, noise_sd: float) -> dict[str, float]:
    """σ_sweep, σ_noise, SNR and the Spearman a perfect surrogate would reach (see the module docstring)."""
    signal_sd = float(np.std(sweep_bpb_N, ddof=1))
    noise_variance = noise_sd ** 2
    explained = max(signal_sd ** 2 - noise_variance, 0.0)
    reliability = explained / signal_sd ** 2 if signal_sd > 0 else 0.0
    return {
        "sweep_sd": signal_sd, "noise_sd": noise_sd,
        "snr": explained / noise_variance if noise_variance > 0 else math.inf,
        "spearman_ceiling": 6 / math.pi * math.asin(math.sqrt(reliability) / 2),
    }
