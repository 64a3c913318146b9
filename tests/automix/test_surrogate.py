"""Surrogates recover a known mixing law, and cross-validation scores only held-out predictions."""

from __future__ import annotations

import numpy as np
import pytest

from lagoon.automix.crossval import cross_validate, fold_indices
from lagoon.automix.sampling import sample_mixtures
from lagoon.automix.space import MixtureSpace
from lagoon.automix.surrogate import SurrogateOptions, dumps, loads, make_surrogate

K = 8
SPACE = MixtureSpace(tuple(f"leaf{i}" for i in range(K)), (1000,) * K, target_tokens=1000, max_epochs=8.0)


def law(weights_NK, floor=0.9, slopes=None):
    """A Data-Mixing-Laws loss: exp(c) + exp(tᵀw)."""
    slopes = np.linspace(-1.5, 1.2, K) if slopes is None else slopes
    return np.exp(np.log(floor)) + np.exp(weights_NK @ slopes)


def mixtures(count, seed):
    return sample_mixtures(SPACE, count, np.random.default_rng(seed), concentration=(0.2, 5.0), temperature=1.0)


def test_loglinear_recovers_a_known_law_exactly_without_noise():
    slopes = np.random.default_rng(0).uniform(-1.5, 1.5, K)
    train_NK, test_NK = mixtures(60, 1), mixtures(200, 2)
    fitted = make_surrogate("loglinear").fit(train_NK, law(train_NK, 0.7, slopes))
    assert np.exp(fitted.floor) == pytest.approx(0.7, abs=0.02)
    assert np.abs(fitted.slopes - slopes).max() < 0.01
    assert np.abs(fitted.predict(test_NK) - law(test_NK, 0.7, slopes)).max() < 1e-3


def test_loglinear_recovers_the_law_through_noise_and_beats_linear():
    rng = np.random.default_rng(3)
    train_NK, test_NK = mixtures(60, 4), mixtures(300, 5)
    noisy_N = law(train_NK) + rng.normal(0, 0.01, len(train_NK))
    truth_N = law(test_NK)
    errors = {}
    for kind in ("loglinear", "linear", "lightgbm"):
        fitted = make_surrogate(kind).fit(train_NK, noisy_N)
        errors[kind] = np.abs(fitted.predict(test_NK) - truth_N).mean()
    assert errors["loglinear"] < 0.01 < errors["linear"]
    assert errors["loglinear"] < errors["lightgbm"]


def test_gradients_match_finite_differences():
    train_NK = mixtures(40, 6)
    for kind in ("loglinear", "linear"):
        fitted = make_surrogate(kind).fit(train_NK, law(train_NK))
        w_K, eps = train_NK[0], 1e-6
        numeric_K = [(fitted.predict((w_K + eps * e)[None])[0] - fitted.predict((w_K - eps * e)[None])[0]) / (2 * eps)
                     for e in np.eye(K)]
        assert np.allclose(fitted.gradient(w_K), numeric_K, atol=1e-5)


def test_cross_validation_scores_a_true_law_high_and_noise_near_zero():
    weights_NK = mixtures(60, 7)
    rng = np.random.default_rng(8)
    targets = {"signal": law(weights_NK) + rng.normal(0, 0.005, 60), "noise": 2.0 + rng.normal(0, 0.05, 60)}
    scores = cross_validate("loglinear", weights_NK, targets, folds=5, seed=0)
    assert scores["signal"].spearman > 0.95 and scores["signal"].mae < 0.02
    # Fit in-sample, a 9-parameter model would correlate with pure noise; held out it cannot.
    assert abs(scores["noise"].spearman) < 0.35
    in_sample = make_surrogate("loglinear").fit(weights_NK, targets["noise"]).predict(weights_NK)
    assert np.corrcoef(in_sample, targets["noise"])[0, 1] > abs(scores["noise"].spearman)
    assert len(scores["signal"].fold_spearman) == 5 and len(scores["signal"].predicted) == 60


def test_folds_partition_the_proxies():
    parts = fold_indices(23, 5, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(23))
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


@pytest.mark.parametrize("kind", ["loglinear", "linear", "lightgbm"])
def test_fitted_surrogates_round_trip_through_json(kind):
    weights_NK = mixtures(40, 9)
    fitted = {"code": make_surrogate(kind).fit(weights_NK, law(weights_NK))}
    restored = loads(dumps(fitted))
    assert np.allclose(restored["code"].predict(weights_NK), fitted["code"].predict(weights_NK))


def test_shrinking_toward_domains_helps_when_buckets_of_a_domain_act_alike():
    # 12 leaves = 4 domains × 3 quality buckets; buckets share their domain's slope up to a small deviation.
    rng = np.random.default_rng(10)
    domains = tuple(np.repeat(np.arange(4), 3))
    slopes = np.repeat([-1.5, -0.3, 0.6, 1.4], 3) + rng.normal(0, 0.05, 12)
    space = MixtureSpace(tuple(f"d{d}/q{i % 3}" for i, d in enumerate(domains)), (1000,) * 12, 1000, 12.0)
    train_NK = sample_mixtures(space, 24, rng, concentration=(0.2, 5.0), temperature=1.0)
    test_NK = sample_mixtures(space, 300, rng, concentration=(0.2, 5.0), temperature=1.0)
    noisy_N = law(train_NK, 0.8, slopes) + rng.normal(0, 0.02, len(train_NK))
    truth_N = law(test_NK, 0.8, slopes)
    flat = make_surrogate("loglinear", SurrogateOptions()).fit(train_NK, noisy_N)
    grouped = make_surrogate("loglinear", SurrogateOptions(leaf_domains=domains)).fit(train_NK, noisy_N)
    assert np.abs(grouped.predict(test_NK) - truth_N).mean() < 0.8 * np.abs(flat.predict(test_NK) - truth_N).mean()


def test_inner_cross_validation_picks_little_shrinkage_for_clean_data_and_much_for_noise():
    weights_NK = mixtures(48, 11)
    rng = np.random.default_rng(12)
    clean = make_surrogate("loglinear").fit(weights_NK, law(weights_NK))
    noise = make_surrogate("loglinear").fit(weights_NK, 2.0 + rng.normal(0, 0.05, 48))
    assert clean.ridge == min(SurrogateOptions().ridge) and noise.ridge == max(SurrogateOptions().ridge)


def test_the_profiled_log_linear_fit_matches_a_generic_optimizer():
    """Reference path: the same penalised objective minimised by L-BFGS from many random starts."""
    from scipy.optimize import minimize

    from lagoon.automix.surrogate import LogLinearSurrogate, shrinkage_matrix

    rng = np.random.default_rng(13)
    weights_NK = mixtures(40, 14)
    targets_N = law(weights_NK) + rng.normal(0, 0.01, 40)
    domains = (0, 0, 1, 1, 2, 2, 3, 3)
    fast = LogLinearSurrogate(SurrogateOptions(leaf_domains=domains), ridge=0.01).fit_fixed(
        weights_NK, targets_N, refine=True)
    scale = targets_N.std() * np.sqrt(40)
    penalty_RK = shrinkage_matrix(K, domains) * np.sqrt(0.01 / K)

    def objective(theta):
        fitted_N = np.exp(theta[0]) + np.exp(weights_NK @ theta[1:])
        return float((((fitted_N - targets_N) / scale) ** 2).sum() + ((penalty_RK @ theta[1:]) ** 2).sum())

    reference = min((minimize(objective, np.concatenate([[np.log(rng.uniform(0.05, 0.95) * targets_N.min())],
                                                          rng.normal(0, 1, K)]), method="L-BFGS-B")
                     for _ in range(20)), key=lambda r: r.fun)
    fast_value = objective(np.concatenate([[fast.floor], fast.slopes]))
    assert fast_value <= reference.fun * (1 + 1e-3) + 1e-9
    test_NK = mixtures(200, 15)
    reference_model = LogLinearSurrogate(floor=reference.x[0], slopes=reference.x[1:])
    assert np.abs(fast.predict(test_NK) - reference_model.predict(test_NK)).max() < 0.01


def test_a_ridge_path_fits_every_lambda_as_a_single_fit_would():
    """The batched path the inner cross-validation uses against one `fit_fixed` per λ."""
    from lagoon.automix.surrogate import LogLinearSurrogate

    weights_NK = mixtures(40, 16)
    targets_N = law(weights_NK) + np.random.default_rng(17).normal(0, 0.01, 40)
    options = SurrogateOptions(leaf_domains=(0, 0, 1, 1, 2, 2, 3, 3), feature_domains=(0, 0, 1, 1, 2, 2, 3, 3),
                               log_features="domain")
    ridges = [1e-4, 1e-2, 1.0]
    path = LogLinearSurrogate(options).fit_path(weights_NK, targets_N, ridges)
    for ridge, fitted in zip(ridges, path):
        single = LogLinearSurrogate(options, ridge=ridge).fit_fixed(weights_NK, targets_N)
        assert fitted.ridge == ridge and fitted.floor == pytest.approx(single.floor)
        assert np.allclose(fitted.slopes, single.slopes)
