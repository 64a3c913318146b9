"""The optimizer stays on the capped simplex, finds known optima, and the KL pull keeps it near the prior."""

from __future__ import annotations

import numpy as np
import pytest

from lagoon.automix.optimize import Objective, interaction_matrix, optimize_mixture
from lagoon.automix.sampling import sample_mixtures
from lagoon.automix.space import MixtureSpace, kl_divergence
from lagoon.automix.surrogate import LinearSurrogate, LogLinearSurrogate, make_surrogate

LEAVES = ("code/high", "code/low", "web/high", "web/low", "math/high")
TOKENS = (20_000, 30_000, 30_000, 15_000, 5_000)
SPACE = MixtureSpace(LEAVES, TOKENS, target_tokens=100_000, max_epochs=3.0)  # caps: .6 .9 .9 .45 .15


def linear_objective(coefficients, kl=0.0):
    return Objective({"g": LinearSurrogate(coefficients=np.asarray(coefficients, dtype=float))}, {"g": 1.0},
                     SPACE.prior, kl)


def test_without_kl_a_linear_objective_fills_the_best_leaves_up_to_their_caps():
    # Leaf order by benefit: math/high, code/high, web/high, ... ; caps 0.15 and 0.6 bind, web/high takes the rest.
    objective = linear_objective([1.0, 3.0, 2.0, 4.0, 0.0])
    result = optimize_mixture(objective, SPACE, "slsqp", np.random.default_rng(0), candidates=2000)
    assert np.allclose(result.weights, [0.6, 0.0, 0.25, 0.0, 0.15], atol=1e-6)
    assert SPACE.feasible(result.weights)
    assert result.value == pytest.approx(0.6 * 1 + 0.25 * 2)


def test_kl_pull_moves_the_answer_toward_the_prior_monotonically():
    objective_coefficients = [1.0, 3.0, 2.0, 4.0, 0.0]
    divergences, losses = [], []
    for strength in (0.0, 0.1, 1.0, 100.0):
        result = optimize_mixture(linear_objective(objective_coefficients, strength), SPACE, "slsqp",
                                  np.random.default_rng(0), candidates=2000)
        assert SPACE.feasible(result.weights)
        divergences.append(result.kl)
        losses.append(linear_objective(objective_coefficients).loss(result.weights)[0])
    assert divergences == sorted(divergences, reverse=True) and divergences[-1] < 1e-3
    assert losses == sorted(losses)  # giving up predicted loss is the price of staying near the prior


def test_slsqp_matches_the_kl_regularised_closed_form():
    # For a linear objective and no binding caps, argmin βᵀw + s·KL(w‖p) is p·exp(−β/s), normalised.
    loose = MixtureSpace(LEAVES, TOKENS, target_tokens=10_000, max_epochs=100.0)
    beta = np.array([1.0, 3.0, 2.0, 4.0, 0.0])
    objective = Objective({"g": LinearSurrogate(coefficients=beta)}, {"g": 1.0}, loose.prior, 2.0)
    result = optimize_mixture(objective, loose, "slsqp", np.random.default_rng(0), candidates=500)
    expected = loose.prior * np.exp(-beta / 2.0)
    assert np.allclose(result.weights, expected / expected.sum(), atol=1e-5)


def test_topk_works_with_trees_and_respects_the_caps():
    rng = np.random.default_rng(1)
    train_NK = sample_mixtures(SPACE, 80, rng)
    truth = LogLinearSurrogate(floor=np.log(0.5), slopes=np.array([-1.0, 0.5, 0.2, 1.0, -2.0]))
    trees = make_surrogate("lightgbm").fit(train_NK, truth.predict(train_NK))
    objective = Objective({"g": trees}, {"g": 1.0}, SPACE.prior, 0.01)
    result = optimize_mixture(objective, SPACE, "topk", np.random.default_rng(2), candidates=5000, top_k=50)
    assert SPACE.feasible(result.weights)
    # The trees learnt that math/high and code/high help: the chosen mix beats the prior under the true law.
    assert truth.predict(result.weights[None])[0] < truth.predict(SPACE.prior[None])[0] - 0.05
    with pytest.raises(AssertionError, match="differentiable"):
        optimize_mixture(objective, SPACE, "slsqp", np.random.default_rng(2), candidates=100)


def test_weighted_groups_trade_off():
    code = LinearSurrogate(coefficients=np.array([0.0, 1.0, 2.0, 2.0, 2.0]))  # code/high helps code
    math = LinearSurrogate(coefficients=np.array([2.0, 2.0, 2.0, 2.0, 0.0]))  # math/high helps math
    chosen = {}
    for name, weights in {"code": {"code": 1.0, "math": 0.01}, "math": {"code": 0.01, "math": 1.0}}.items():
        objective = Objective({"code": code, "math": math}, weights, SPACE.prior, 0.05)
        chosen[name] = optimize_mixture(objective, SPACE, "slsqp", np.random.default_rng(0), candidates=500).weights
    assert chosen["code"][0] > chosen["math"][0] and chosen["math"][4] > chosen["code"][4]


def test_interaction_matrix_signs_follow_the_law():
    helps_code = LogLinearSurrogate(floor=np.log(0.5), slopes=np.array([-2.0, -1.0, 1.0, 1.5, 0.0]))
    matrix_GK = interaction_matrix({"code": helps_code}, SPACE.prior)
    assert matrix_GK.shape == (1, 5)
    assert matrix_GK[0, 0] < matrix_GK[0, 1] < 0 < matrix_GK[0, 2] < matrix_GK[0, 3]
    assert kl_divergence(SPACE.prior[None], SPACE.prior)[0] == pytest.approx(0)


@pytest.mark.parametrize("method", ["slsqp", "topk"])
def test_the_trust_region_bounds_the_divergence_from_the_prior(method):
    objective = linear_objective([1.0, 3.0, 2.0, 4.0, 0.0])
    free = optimize_mixture(objective, SPACE, method, np.random.default_rng(0), candidates=3000)
    bounded = optimize_mixture(objective, SPACE, method, np.random.default_rng(0), candidates=3000, max_kl=0.1)
    assert free.kl > 0.1 >= bounded.kl - 1e-6 and SPACE.feasible(bounded.weights)
    assert bounded.value >= free.value - 1e-9  # the bound costs predicted loss, never gains it
    if method == "slsqp":
        assert bounded.kl == pytest.approx(0.1, abs=1e-4)  # a linear objective presses against the boundary


def disagreeing_members(coefficients, unsure_leaf, count=24, spread=3.0):
    """Bootstrap-like members that agree on every leaf but one, about which they disagree widely."""
    rng = np.random.default_rng(5)
    members = []
    for _ in range(count):
        member = np.asarray(coefficients, dtype=float).copy()
        member[unsure_leaf] += rng.normal(0, spread)
        members.append({"g": LinearSurrogate(coefficients=member)})
    return members


def test_the_uncertainty_term_keeps_weight_off_leaves_the_members_disagree_about():
    # Point estimate: code/high (leaf 0) helps most, web/high (leaf 2) a little less; the members are sure
    # about web/high and not about code/high.
    coefficients = [0.0, 3.0, 0.5, 4.0, 3.0]
    members = disagreeing_members(coefficients, unsure_leaf=0)
    chosen = {}
    for kappa in (0.0, 2.0):
        objective = Objective({"g": LinearSurrogate(coefficients=np.asarray(coefficients))}, {"g": 1.0}, SPACE.prior,
                              0.05, members, kappa)
        chosen[kappa] = optimize_mixture(objective, SPACE, "slsqp", np.random.default_rng(0), candidates=2000).weights
        assert SPACE.feasible(chosen[kappa])
    prior = SPACE.prior
    assert chosen[0.0][0] > prior[0] + 0.2  # trusting the point estimate: onto code/high
    assert abs(chosen[2.0][0] - prior[0]) < 0.5 * abs(chosen[0.0][0] - prior[0])  # unsure: little moved there
    assert chosen[2.0][2] > chosen[0.0][2]  # … and onto the leaf the members agree on instead
    spread = Objective({"g": LinearSurrogate(coefficients=np.asarray(coefficients))}, {"g": 1.0}, prior, 0.0,
                       members, 1.0).spread(np.stack([prior, chosen[0.0]]))
    assert spread[0] == pytest.approx(0.0, abs=1e-12) and spread[1] > 0.1  # no doubt about staying put


def test_the_gradient_with_the_uncertainty_term_matches_finite_differences():
    members = disagreeing_members([0.0, 3.0, 0.5, 4.0, 3.0], unsure_leaf=0)
    objective = Objective({"g": LinearSurrogate(coefficients=np.array([0.0, 3.0, 0.5, 4.0, 3.0]))}, {"g": 1.0},
                          SPACE.prior, 0.1, members, 1.5)
    w_K, eps = np.array([0.3, 0.2, 0.25, 0.15, 0.1]), 1e-6
    numeric_K = [(objective.value(w_K + eps * e)[0] - objective.value(w_K - eps * e)[0]) / (2 * eps) for e in np.eye(5)]
    assert np.allclose(objective.gradient(w_K), numeric_K, atol=1e-5)


def test_with_two_references_the_result_is_confidently_no_worse_than_either():
    # The members are unsure about code/high; the second reference has the prior's share of it (0.2), so
    # moving to it costs no confidence, and the optimum's worst pessimistic change is at most zero.
    coefficients = np.array([0.0, 3.0, 0.5, 4.0, 3.0])
    members = disagreeing_members(coefficients, unsure_leaf=0)
    uniform = np.array([0.2, 0.25, 0.25, 0.15, 0.15])
    assert SPACE.feasible(uniform) and uniform[0] == pytest.approx(SPACE.prior[0])
    objective = Objective({"g": LinearSurrogate(coefficients=coefficients)}, {"g": 1.0}, SPACE.prior, 0.0, members,
                          2.0, [SPACE.prior, uniform])
    for method in ("slsqp", "topk"):
        result = optimize_mixture(objective, SPACE, method, np.random.default_rng(0), candidates=3000, top_k=20)
        bounds_R = objective.bounds(result.weights)[:, 0]
        assert bounds_R.max() <= 1e-6 and SPACE.feasible(result.weights)
        assert objective.loss(result.weights)[0] <= min(objective.loss(SPACE.prior)[0], objective.loss(uniform)[0])
    single = Objective({"g": LinearSurrogate(coefficients=coefficients)}, {"g": 1.0}, SPACE.prior, 0.0, members, 2.0)
    w_K = uniform
    assert single.value(w_K)[0] == pytest.approx(single.loss(w_K)[0] + 2.0 * single.spread(w_K)[0])


@pytest.mark.parametrize("seed", [1, 3])
def test_a_bootstrap_ensemble_keeps_weight_off_a_leaf_the_proxies_never_varied(seed):
    # The sweep holds code/high at its prior share (± 0.005), so the proxies cannot tell what more or less of it
    # does; its true effect is nil. The point fit's slope for it is noise, and trusting it (κ = 0) sends the
    # leaf to a bound — to its cap for one draw of the noise, to zero for another. Refits on bootstrap
    # resamples disagree about that slope, so the pessimistic bound (κ = 2) leaves the leaf at its prior
    # share and moves weight only among the leaves the proxies did vary.
    from lagoon.automix.selection import Candidate, bootstrap_ensemble
    from lagoon.automix.surrogate import SurrogateOptions

    rng = np.random.default_rng(seed)
    varied_NK = sample_mixtures(SPACE, 40, rng, (0.3, 5.0), 0.5)
    pinned_N = SPACE.prior[0] + rng.uniform(-0.005, 0.005, len(varied_NK))
    rest_NK = varied_NK[:, 1:] / varied_NK[:, 1:].sum(1, keepdims=True) * (1 - pinned_N)[:, None]
    weights_NK = np.concatenate([pinned_N[:, None], rest_NK], axis=1)
    truth = LogLinearSurrogate(floor=0.0, slopes=np.array([0.0, 0.8, 0.2, 1.0, -0.5]))
    targets_N = truth.predict(weights_NK) + rng.normal(0, 0.01, len(weights_NK))
    form = Candidate("loglinear", 1e-3, "leaf", "none")
    point = form.fit(SurrogateOptions(), None, weights_NK, targets_N)
    members = bootstrap_ensemble({"g": form}, SurrogateOptions(), None, weights_NK, {"g": targets_N}, 24, seed=0)
    assert np.std([member["g"].slopes[0] for member in members]) > 0.1  # the members disagree about leaf 0
    moved = {}
    for kappa in (0.0, 2.0):
        objective = Objective({"g": point}, {"g": 1.0}, SPACE.prior, 0.0, members, kappa)
        result = optimize_mixture(objective, SPACE, "slsqp", np.random.default_rng(0), candidates=2000)
        assert SPACE.feasible(result.weights)
        moved[kappa] = result.weights - SPACE.prior
    assert abs(moved[0.0][0]) > 0.15  # trusting the point fit: leaf 0 pushed to a bound
    assert abs(moved[2.0][0]) < 0.02  # unsure: left where it was
    assert moved[2.0][2] > 0.2 and moved[2.0][3] < -0.1  # … while web/high replaces web/low, as every member agrees
    true_loss = truth.predict(np.stack([SPACE.prior, SPACE.prior + moved[2.0]]))
    assert true_loss[1] < true_loss[0]
