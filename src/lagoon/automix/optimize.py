"""Choosing the mixture: minimise the weighted predicted loss over the capped simplex, pulled toward the prior.

    J(w) = Σ_g λ_g · ŷ_g(w) + β · KL(w ‖ prior)
    subject to  Σ w = 1,  0 ≤ w_j ≤ cap_j,  KL(w ‖ prior) ≤ κ

ŷ_g are the per-group surrogates, λ_g the objective weights from the config, cap_j the repetition caps of
the target run. The KL pull (β) and the trust region (κ) keep the answer where the proxies were sampled
(the sweep is centred on the prior), which is where the surrogates were fit: far outside it a log-linear
law extrapolates to losses no proxy came near, and an unconstrained optimizer walks straight there.
Olmix bounds the same divergence for the same reason.

Two methods:

- ``slsqp``: sequential least squares (scipy) from several feasible starts, with the analytic gradient of
  differentiable surrogates (log-linear, linear).
- ``topk``: score many sampled feasible mixtures by J and average the best k (RegMix, Liu et al. 2024,
  §3, averages its top-100 of 100k simulated mixtures); works for any surrogate, trees included, and the
  average of feasible mixtures is feasible because the constraints are convex.

Shape legend: K leaves, N mixtures, G capability groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import minimize

from lagoon.automix.sampling import sample_mixtures
from lagoon.automix.space import MixtureSpace, kl_divergence, project_to_caps
from lagoon.automix.surrogate import Surrogate

OptimizerMethod = Literal["slsqp", "topk"]
# Share of the mixture moved onto one leaf when measuring that leaf's effect on a group (interactions).
INTERACTION_STEP = 0.1
# Smallest weight inside log() of the KL gradient; keeps ∂KL/∂w finite at the simplex's faces.
KL_FLOOR = 1e-12


@dataclass
class Objective:
    """The weighted predicted loss plus the KL pull toward the prior."""

    surrogates: dict[str, Surrogate]
    group_weights: dict[str, float]
    """λ_g, one per surrogate."""
    prior: np.ndarray
    kl_strength: float

    def predict(self, weights_NK: np.ndarray) -> dict[str, np.ndarray]:
        weights_NK = np.atleast_2d(weights_NK)
        return {group: s.predict(weights_NK) for group, s in self.surrogates.items()}

    def loss(self, weights_NK: np.ndarray) -> np.ndarray:
        """[N] Σ λ_g ŷ_g(w): the part of J that the validation runs measure."""
        predicted = self.predict(weights_NK)
        return sum(self.group_weights[g] * predicted[g] for g in self.surrogates)

    def value(self, weights_NK: np.ndarray) -> np.ndarray:
        """[N] J(w)."""
        return self.loss(weights_NK) + self.kl_strength * kl_divergence(np.atleast_2d(weights_NK), self.prior)

    def gradient(self, weights_K: np.ndarray) -> np.ndarray:
        grad_K = sum(self.group_weights[g] * s.gradient(weights_K) for g, s in self.surrogates.items())
        return grad_K + self.kl_strength * (np.log(np.maximum(weights_K, KL_FLOOR) / self.prior) + 1.0)

    @property
    def differentiable(self) -> bool:
        return all(s.differentiable for s in self.surrogates.values())


@dataclass
class OptimizedMixture:
    weights: np.ndarray
    """[K] the chosen mixture (feasible: on the simplex, within the caps)."""
    value: float
    """J at the chosen mixture."""
    predicted: dict[str, float]
    """ŷ_g at the chosen mixture."""
    kl: float
    """KL(chosen ‖ prior) in nats."""
    method: OptimizerMethod


def optimize_mixture(objective: Objective, space: MixtureSpace, method: OptimizerMethod,
                     rng: np.random.Generator, candidates: int = 20000, top_k: int = 100,
                     concentration: tuple[float, float] = (0.1, 5.0), temperature: float = 0.5,
                     max_kl: float | None = None) -> OptimizedMixture:
    """The feasible mixture minimising `objective` within KL ≤ `max_kl` of the prior (see the module docstring)."""
    pool_NK = sample_mixtures(space, candidates, rng, concentration, temperature, min_weight=0.0, distinct=False)
    if max_kl is not None:
        pool_NK = pool_NK[kl_divergence(pool_NK, space.prior) <= max_kl]
        pool_NK = np.concatenate([space.prior[None], pool_NK])  # the prior is always inside
    scores_N = objective.value(pool_NK)
    if method == "topk":
        # KL is convex, so the average of candidates inside the trust region is inside it too.
        best_N = np.argsort(scores_N)[: max(1, min(top_k, len(scores_N)))]
        weights_K = pool_NK[best_N].mean(0)
    else:
        assert objective.differentiable, "slsqp needs differentiable surrogates; use topk"
        starts = [space.prior, *pool_NK[np.argsort(scores_N)[:4]]]
        if max_kl is None:
            starts.append(space.uniform)
        solutions = [_slsqp(objective, space, start, max_kl) for start in starts]
        inside = [w for w in solutions if max_kl is None or kl_divergence(w[None], space.prior)[0] <= max_kl + 1e-6]
        weights_K = min(inside or [space.prior], key=lambda w: objective.value(w)[0])
    weights_K = project_to_caps(np.clip(weights_K, 0.0, None), space.caps)
    assert space.feasible(weights_K), weights_K
    predicted = {g: float(v[0]) for g, v in objective.predict(weights_K).items()}
    return OptimizedMixture(weights=weights_K, value=float(objective.value(weights_K)[0]), predicted=predicted,
                            kl=float(kl_divergence(weights_K[None], space.prior)[0]), method=method)


def _slsqp(objective: Objective, space: MixtureSpace, start_K: np.ndarray, max_kl: float | None) -> np.ndarray:
    constraints = [{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}]
    if max_kl is not None:
        constraints.append({
            "type": "ineq", "fun": lambda w: max_kl - kl_divergence(np.maximum(w, 0.0)[None], space.prior)[0],
            "jac": lambda w: -(np.log(np.maximum(w, KL_FLOOR) / space.prior) + 1.0)})
    result = minimize(
        lambda w: float(objective.value(w)[0]), project_to_caps(start_K, space.caps), jac=objective.gradient,
        method="SLSQP", bounds=[(0.0, float(cap)) for cap in space.caps], constraints=constraints,
        options={"maxiter": 500, "ftol": 1e-12})
    return project_to_caps(np.clip(result.x, 0.0, None), space.caps)


def interaction_matrix(surrogates: dict[str, Surrogate], prior_K: np.ndarray) -> np.ndarray:
    """[G, K] change in each group's predicted loss when `INTERACTION_STEP` of the prior moves onto one leaf.

    Negative: more of the leaf helps the group (its loss falls); positive: it hurts. Defined by finite
    difference so every surrogate kind reports the same quantity.
    """
    k = len(prior_K)
    shifted_KK = (1 - INTERACTION_STEP) * prior_K[None, :] + INTERACTION_STEP * np.eye(k)
    rows = []
    for surrogate in surrogates.values():
        rows.append(surrogate.predict(shifted_KK) - surrogate.predict(prior_K[None, :])[0])
    return np.stack(rows)
