"""Choosing a group's surrogate form by nested cross-validation, log-share features, and bootstrap spread."""

from __future__ import annotations

import numpy as np
import pytest

from lagoon.automix.crossval import nested_cross_validate
from lagoon.automix.sampling import sample_mixtures
from lagoon.automix.selection import Candidate, bootstrap_ensemble, candidate_grid, select
from lagoon.automix.space import MixtureSpace
from lagoon.automix.surrogate import LogLinearSurrogate, SurrogateOptions, dumps, loads

# 12 leaves = 4 domains × 3 quality buckets.
DOMAINS = tuple(int(d) for d in np.repeat(np.arange(4), 3))
SPACE = MixtureSpace(tuple(f"d{d}/q{i % 3}" for i, d in enumerate(DOMAINS)), (1000,) * 12, 1000, 12.0)
OPTIONS = SurrogateOptions()
SMALL_GRID = candidate_grid("loglinear", [1e-3, 1e-1], ["domain", "leaf"], ["none", "domain", "leaf"], [0.01], True)


def mixtures(count, seed):
    return sample_mixtures(SPACE, count, np.random.default_rng(seed), concentration=(0.1, 5.0), temperature=0.5)


def power_law(weights_NK):
    """A group whose loss explodes as its domain (d0) vanishes: 1 + 0.6 · (share + 0.01)^−0.35."""
    return 1.0 + 0.6 * (weights_NK[:, :3].sum(1) + 0.01) ** -0.35


def test_the_grid_covers_every_form_and_lists_simpler_ones_first():
    grid = candidate_grid("loglinear", [1e-2, 1.0], ["domain", "leaf"], ["none", "leaf", "domain"], [0.003, 0.03], True)
    assert len(grid) == 2 * 2 * (1 + 2 + 2) and len({c.label for c in grid}) == len(grid)
    assert grid[0] == Candidate("loglinear", 1.0, "domain", "none", 0.01)  # strongest shrinkage, no log features
    assert {c.log_features for c in candidate_grid("linear", [1.0], ["leaf"], ["leaf"], [0.01], True)} == {"none"}
    assert candidate_grid("lightgbm", [1.0], ["leaf"], ["none"], [0.01], True) == [Candidate("lightgbm")]


def test_log_features_are_chosen_where_the_loss_is_a_power_law_and_predict_better():
    rng = np.random.default_rng(0)
    train_NK, test_NK = mixtures(56, 1), mixtures(400, 2)
    noisy_N = power_law(train_NK) + rng.normal(0, 0.01, len(train_NK))
    chosen = select(SMALL_GRID, OPTIONS, DOMAINS, train_NK, noisy_N, folds=4, seed=0).chosen
    assert chosen.log_features != "none"
    plain = Candidate("loglinear", 1e-3, "domain").fit(OPTIONS, DOMAINS, train_NK, noisy_N)
    fitted = chosen.fit(OPTIONS, DOMAINS, train_NK, noisy_N)
    truth_N = power_law(test_NK)
    assert np.abs(fitted.predict(test_NK) - truth_N).mean() < 0.5 * np.abs(plain.predict(test_NK) - truth_N).mean()


def test_leaf_level_effects_are_kept_where_buckets_differ():
    # Quality buckets of d0 pull in opposite directions: shrinking them toward their domain's mean erases that.
    rng = np.random.default_rng(3)
    slopes = np.zeros(12)
    slopes[:3] = [-1.5, 0.0, 1.5]
    weights_NK = mixtures(56, 4)
    targets_N = 0.8 + np.exp(weights_NK @ slopes) + rng.normal(0, 0.005, len(weights_NK))
    grid = candidate_grid("loglinear", [10.0, 1.0], ["domain", "leaf"], ["none"], [0.01], True)
    assert select(grid, OPTIONS, DOMAINS, weights_NK, targets_N, folds=4, seed=0).chosen.shrink == "leaf"
    scores = nested_cross_validate(grid, weights_NK, {"code": targets_N}, 5, 4, 0, OPTIONS, DOMAINS)
    assert scores["code"].spearman > 0.95 and len(scores["code"].fold_choices) == 5


def test_nested_cross_validation_stays_honest_on_pure_noise():
    # Searching 12 forms for the best held-out error would find one that looks good on the folds it was
    # chosen on; the nested score, whose folds never saw the choice, stays near zero.
    weights_NK = mixtures(48, 5)
    noise_N = 2.0 + np.random.default_rng(6).normal(0, 0.05, len(weights_NK))
    scores = nested_cross_validate(SMALL_GRID, weights_NK, {"noise": noise_N}, 4, 4, 0, OPTIONS, DOMAINS)
    assert abs(scores["noise"].spearman) < 0.4


@pytest.mark.parametrize("features", ["leaf", "domain"])
def test_log_feature_gradients_match_finite_differences_and_round_trip(features):
    weights_NK = mixtures(40, 7)
    options = SurrogateOptions(leaf_domains=DOMAINS, feature_domains=DOMAINS, log_features=features, log_offset=0.02)
    fitted = LogLinearSurrogate(options, ridge=1e-2).fit_fixed(weights_NK, power_law(weights_NK), refine=True)
    w_K, eps = weights_NK[3], 1e-7
    numeric_K = [(fitted.predict((w_K + eps * e)[None])[0] - fitted.predict((w_K - eps * e)[None])[0]) / (2 * eps)
                 for e in np.eye(12)]
    assert np.allclose(fitted.gradient(w_K), numeric_K, rtol=1e-4, atol=1e-6)
    restored = loads(dumps({"g": fitted}))["g"]
    assert np.allclose(restored.predict(weights_NK), fitted.predict(weights_NK))


def test_bootstrap_spread_is_small_where_proxies_are_and_grows_where_they_are_not():
    # Proxies near the prior only: members agree there and disagree about a mix none of them came near.
    rng = np.random.default_rng(8)
    near_NK = sample_mixtures(SPACE, 40, rng, concentration=(20.0, 50.0), temperature=1.0)
    targets = {"g": power_law(near_NK) + rng.normal(0, 0.01, 40)}
    chosen = {"g": Candidate("loglinear", 1e-2, "domain", "domain", 0.01)}
    members = bootstrap_ensemble(chosen, OPTIONS, DOMAINS, near_NK, targets, 16, seed=0)
    assert len(members) == 16
    far_K = np.zeros(12)
    far_K[9:] = 1 / 3
    predictions_BN = np.stack([m["g"].predict(np.stack([SPACE.prior, far_K])) for m in members])
    spread_near, spread_far = predictions_BN.std(0)
    assert spread_far > 5 * spread_near


def additive_law(weights_NK):
    """A group whose held-out set mixes two domains: a sum of two power laws, one per domain (d0, d1)."""
    return 0.5 + 0.3 * (weights_NK[:, :3].sum(1) + 0.01) ** -0.5 + 0.2 * (weights_NK[:, 3:6].sum(1) + 0.01) ** -0.4


def test_the_additive_form_wins_where_the_loss_is_a_sum_of_domain_power_laws():
    from dataclasses import replace

    rng = np.random.default_rng(9)
    weights_NK, test_NK = mixtures(56, 10), mixtures(400, 11)
    targets_N = additive_law(weights_NK) + rng.normal(0, 0.01, len(weights_NK))
    options = replace(OPTIONS, group_domains=(0, 1))
    additive = candidate_grid("additive", [1e-3, 1e-1], ["domain"], ["none"], [0.01], True, ["own", "all"])
    chosen = select(SMALL_GRID + additive, options, DOMAINS, weights_NK, targets_N, folds=4, seed=0).chosen
    assert chosen.kind == "additive"
    fitted = chosen.fit(options, DOMAINS, weights_NK, targets_N)
    best_loglinear = select(SMALL_GRID, options, DOMAINS, weights_NK, targets_N, folds=4, seed=0).chosen.fit(
        options, DOMAINS, weights_NK, targets_N)
    truth_N = additive_law(test_NK)
    assert np.abs(fitted.predict(test_NK) - truth_N).mean() < 0.5 * np.abs(best_loglinear.predict(test_NK) - truth_N).mean()


def test_additive_gradients_match_finite_differences_and_round_trip():
    from dataclasses import replace

    weights_NK = mixtures(40, 12)
    options = replace(OPTIONS, group_domains=(0, 1))
    fitted = Candidate("additive", 1e-2, "leaf", "none", 0.01, "own").fit(options, DOMAINS, weights_NK,
                                                                          additive_law(weights_NK))
    assert len(fitted.exponents) == 2 and (fitted.amplitudes > 0).all()
    w_K, eps = weights_NK[5], 1e-7
    numeric_K = [(fitted.predict((w_K + eps * e)[None])[0] - fitted.predict((w_K - eps * e)[None])[0]) / (2 * eps)
                 for e in np.eye(12)]
    assert np.allclose(fitted.gradient(w_K), numeric_K, rtol=1e-4, atol=1e-6)
    restored = loads(dumps({"g": fitted}))["g"]
    assert np.allclose(restored.predict(weights_NK), fitted.predict(weights_NK))


@pytest.mark.parametrize("candidate", [Candidate("loglinear", 1e-2, "leaf", "domain", 0.01),
                                       Candidate("additive", 1e-2, "domain", "none", 0.01, "own")])
def test_the_stacked_ensemble_agrees_with_its_members_one_by_one(candidate):
    """Fast path (members stacked into one array per parameter) against the per-member reference."""
    from dataclasses import replace

    from lagoon.automix.ensemble import EnsembleLoss

    weights_NK = mixtures(40, 13)
    options = replace(OPTIONS, group_domains=(0, 1))
    targets = {"a": additive_law(weights_NK), "b": power_law(weights_NK)}
    members = bootstrap_ensemble({"a": candidate, "b": candidate}, options, DOMAINS, weights_NK, targets, 6, seed=1)
    ensemble = EnsembleLoss(members, {"a": 1.0, "b": 0.5})
    test_NK = mixtures(50, 14)
    assert np.allclose(ensemble.loss(test_NK), ensemble.reference_loss(test_NK))
    w_K = test_NK[0]
    expected_BK = np.stack([sum(weight * member[g].gradient(w_K) for g, weight in (("a", 1.0), ("b", 0.5)))
                            for member in members])
    assert np.allclose(ensemble.gradient(w_K), expected_BK)


def test_each_outer_fold_chooses_and_fits_without_its_held_out_proxies():
    # Nested cross-validation is honest when neither the choice of form nor the fit of an outer fold depends
    # on the proxies that fold is scored on. Scramble the held-out fold's losses: its choice and its
    # predictions stay exactly as they were, while the folds that train on those proxies change.
    from lagoon.automix.crossval import fold_indices

    rng = np.random.default_rng(15)
    weights_NK = mixtures(40, 16)
    targets_N = power_law(weights_NK) + rng.normal(0, 0.01, len(weights_NK))
    held_out = fold_indices(len(weights_NK), 4, 0)[0]
    scrambled_N = targets_N.copy()
    scrambled_N[held_out] = 5.0 + rng.permutation(targets_N[held_out]) ** 3  # nothing like the law
    before, after = (nested_cross_validate(SMALL_GRID, weights_NK, {"g": y}, 4, 4, 0, OPTIONS, DOMAINS)["g"]
                     for y in (targets_N, scrambled_N))
    assert after.fold_choices[0] == before.fold_choices[0]
    assert np.array_equal(np.asarray(after.predicted)[held_out], np.asarray(before.predicted)[held_out])
    others = np.setdiff1d(np.arange(len(weights_NK)), held_out)
    assert not np.allclose(np.asarray(after.predicted)[others], np.asarray(before.predicted)[others])
