"""Sampled proxy mixtures lie on the simplex, respect the repetition caps and centre on the prior."""

from __future__ import annotations

import numpy as np
import pytest

from lagoon.automix.sampling import dirichlet, sample_mixtures, tempered_prior
from lagoon.automix.space import MixtureSpace, kl_divergence, project_to_caps
from lagoon.errors import ConfigError, LagoonError

LEAVES = ("code/high", "code/low", "web/high", "web/mid", "web/low", "math/high")
TOKENS = (40_000, 10_000, 25_000, 15_000, 8_000, 2_000)


def space(target_tokens=100_000, max_epochs=4.0):
    return MixtureSpace(LEAVES, TOKENS, target_tokens=target_tokens, max_epochs=max_epochs)


def test_prior_is_the_natural_token_share_and_caps_follow_repetition():
    s = space()
    assert np.allclose(s.prior, np.array(TOKENS) / sum(TOKENS))
    # math/high has 2,000 tokens: a 100k-token run may give it at most 4 × 2,000 / 100k = 8%.
    assert s.caps[-1] == pytest.approx(0.08)
    assert np.allclose(s.epochs(s.prior), 100_000 / sum(TOKENS))


def test_samples_are_on_the_simplex_within_caps_and_distinct():
    s = space()
    weights_NK = sample_mixtures(s, 200, np.random.default_rng(0), concentration=(0.1, 5.0))
    assert weights_NK.shape == (200, len(LEAVES))
    assert (weights_NK >= 0).all() and np.allclose(weights_NK.sum(1), 1)
    assert (s.epochs(weights_NK) <= s.max_epochs + 1e-9).all()
    assert len({tuple(np.round(w, 9)) for w in weights_NK}) == 200


def test_caps_reject_draws_that_would_otherwise_occur():
    loose, tight = space(max_epochs=1000.0), space(max_epochs=2.0)
    rng = np.random.default_rng(1)
    unconstrained_NK = sample_mixtures(loose, 500, rng, concentration=(0.1, 1.0))
    assert (unconstrained_NK[:, -1] > tight.caps[-1]).mean() > 0.05  # the tight cap binds ...
    constrained_NK = sample_mixtures(tight, 500, np.random.default_rng(1), concentration=(0.1, 1.0))
    assert (constrained_NK <= tight.caps + 1e-9).all()  # ... and no accepted draw breaks it


def test_samples_centre_on_the_tempered_prior():
    s = space(max_epochs=1000.0)
    for temperature in (1.0, 0.5):
        weights_NK = sample_mixtures(s, 3000, np.random.default_rng(2), concentration=(20.0, 20.0),
                                     temperature=temperature, min_weight=0.0)
        assert np.abs(weights_NK.mean(0) - tempered_prior(s.prior, temperature)).max() < 0.01
    flat = tempered_prior(s.prior, 0.5)
    assert flat.max() < s.prior.max() and flat.min() > s.prior.min()


def test_low_concentration_gives_sparse_mixtures_and_the_floor_zeroes_crumbs():
    s = space(max_epochs=1000.0)
    sparse_NK = sample_mixtures(s, 300, np.random.default_rng(3), concentration=(0.05, 0.05), min_weight=0.01)
    dense_NK = sample_mixtures(s, 300, np.random.default_rng(3), concentration=(20.0, 20.0), min_weight=0.01)
    assert (sparse_NK == 0).mean() > 0.5 > (dense_NK == 0).mean()
    assert ((sparse_NK == 0) | (sparse_NK >= 0.01 - 1e-12)).all()


def test_tiny_dirichlet_concentrations_stay_finite():
    weights_NK = dirichlet(np.random.default_rng(0), np.full((100, 5), 1e-4))
    assert np.isfinite(weights_NK).all() and np.allclose(weights_NK.sum(1), 1)


def test_impossible_repetition_budgets_are_user_errors():
    with pytest.raises(ConfigError, match="automix.max_epochs"):
        space(target_tokens=10 * sum(TOKENS), max_epochs=4.0)  # the run repeats the corpus 10×
    # Feasible only very near the prior: rejection cannot find draws at low concentration.
    cramped = space(target_tokens=int(3.99 * sum(TOKENS)), max_epochs=4.0)
    with pytest.raises(LagoonError, match="respect the repetition cap"):
        sample_mixtures(cramped, 20, np.random.default_rng(0), concentration=(0.1, 0.2))


def test_projection_onto_capped_simplex_is_feasible_and_closest():
    s = space()
    rng = np.random.default_rng(4)
    for _ in range(20):
        v = rng.normal(size=len(LEAVES))
        p = project_to_caps(v, s.caps)
        assert s.feasible(p)
        # No feasible point sampled nearby is closer to v than its projection.
        others = sample_mixtures(s, 200, rng, concentration=(0.5, 5.0), min_weight=0.0, distinct=False)
        assert np.linalg.norm(p - v) <= np.linalg.norm(others - v, axis=1).min() + 1e-9
    assert kl_divergence(s.prior[None], s.prior)[0] == pytest.approx(0.0)
