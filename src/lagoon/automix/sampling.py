"""Sampling proxy mixtures: Dirichlet draws around the prior, rejected when they break a repetition cap.

Follows RegMix (Liu et al. 2024, "RegMix: Data Mixture as Regression", §3 and its
``synthesize_mixture.py``): the Dirichlet's mean is the prior flattened by a temperature, its
concentration is drawn log-uniformly per mixture so the sweep covers both sparse mixtures (a few leaves
dominate) and ones close to the prior, weights below a floor are zeroed, and any draw that would repeat a
leaf beyond the cap in the target run is rejected (not clipped, so accepted draws keep the Dirichlet's
shape).

Shape legend: K leaves, N mixtures.
"""

from __future__ import annotations

import numpy as np

from lagoon.automix.space import MixtureSpace
from lagoon.errors import LagoonError

# Draws tried per requested mixture before concluding the caps leave too little room.
MAX_DRAWS_PER_SAMPLE = 2000
# Draws per round. Fixed (not a function of the count) so that the first n of a larger request are the n of
# a smaller one with the same seed: a sweep can be extended without changing its existing mixtures.
DRAW_BATCH = 1024


def tempered_prior(prior_K: np.ndarray, temperature: float) -> np.ndarray:
    """prior^temperature, renormalised: temperature < 1 flattens a skewed prior (RegMix uses 0.5)."""
    tempered_K = np.asarray(prior_K, dtype=np.float64) ** temperature
    return tempered_K / tempered_K.sum()


def sample_mixtures(space: MixtureSpace, count: int, rng: np.random.Generator,
                    concentration: tuple[float, float] = (0.1, 5.0), temperature: float = 0.5,
                    min_weight: float = 1e-3, distinct: bool = True) -> np.ndarray:
    """[count, K] mixtures on the simplex, each within the space's caps (and distinct if `distinct`).

    Each draw is ``Dirichlet(s · K · prior^temperature)`` with ``log s ~ U(log c_min, log c_max)``:
    s is the concentration per leaf, so s ≪ 1 gives sparse mixtures and s ≫ 1 mixtures near the
    (tempered) prior. Weights under `min_weight` are zeroed and the rest renormalised (RegMix's floor:
    a leaf with a handful of tokens in a proxy's budget tells nothing).
    """
    low, high = concentration
    assert 0 < low <= high and count >= 0
    mean_K = tempered_prior(space.prior, temperature)
    accepted_NK = np.zeros((0, space.size))
    draws = 0
    batch = DRAW_BATCH
    while len(accepted_NK) < count:
        if draws >= MAX_DRAWS_PER_SAMPLE * max(count, 1):
            raise LagoonError(
                f"only {len(accepted_NK)} of {count} sampled mixtures respect the repetition cap of "
                f"{space.max_epochs:g} epochs; raise automix.max_epochs, lower the target token budget, "
                "or raise the concentration range so draws stay nearer the prior")
        strength_N = np.exp(rng.uniform(np.log(low), np.log(high), size=batch))
        alpha_NK = strength_N[:, None] * space.size * mean_K[None, :]
        weights_NK = dirichlet(rng, alpha_NK)
        weights_NK = np.where(weights_NK < min_weight, 0.0, weights_NK)
        weights_NK = weights_NK / weights_NK.sum(-1, keepdims=True)
        draws += batch
        weights_NK = weights_NK[space.feasible(weights_NK)]
        if distinct:
            for weights_K in weights_NK:
                if len(accepted_NK) == count:
                    break
                if not len(accepted_NK) or np.abs(accepted_NK - weights_K).sum(-1).min() > 1e-6:
                    accepted_NK = np.concatenate([accepted_NK, weights_K[None]])
        else:
            accepted_NK = np.concatenate([accepted_NK, weights_NK[: count - len(accepted_NK)]])
    return accepted_NK


def dirichlet(rng: np.random.Generator, alpha_NK: np.ndarray) -> np.ndarray:
    """Dirichlet draws with a different α per row (numpy's `dirichlet` takes one α for all rows).

    A Dirichlet is normalised Gammas. For small α a Gamma(α) draw underflows to 0, so the draw is made in
    log space with Gamma(α) = Gamma(α + 1) · U^(1/α) (Marsaglia & Tsang 2000, §6) and normalised by a
    softmax.
    """
    alpha_NK = np.asarray(alpha_NK, dtype=np.float64)
    log_gamma_NK = np.log(rng.gamma(alpha_NK + 1.0)) + np.log(rng.uniform(size=alpha_NK.shape)) / alpha_NK
    log_gamma_NK -= log_gamma_NK.max(-1, keepdims=True)
    weights_NK = np.exp(log_gamma_NK)
    return weights_NK / weights_NK.sum(-1, keepdims=True)
