"""Choosing the mixture: minimise a pessimistic bound on the weighted loss over the capped simplex, near the prior.

    J(w) = max_r [ L(w) − L(r) + κ · sd_b(L_b(w) − L_b(r)) ] + L(prior) + β · KL(w ‖ prior)
    subject to  Σ w = 1,  0 ≤ w_j ≤ cap_j,  KL(w ‖ prior) ≤ κ_KL

L(w) = Σ_g λ_g ŷ_g(w) is the weighted predicted loss (ŷ_g the per-group surrogates, λ_g the objective
weights), L_b the same for bootstrap member b (`lagoon.automix.selection.bootstrap_ensemble`), r ranges over
the *reference mixes* (the natural mix, and by default the uniform one: the mixes a person would pick
without AutoMixer), cap_j are the repetition caps of the target run. For each reference the bracket is an
upper confidence bound on the predicted change of the loss from that reference (GP-UCB, Srinivas et al.
2010, read for minimisation; Olmix and RegMix stop at the point prediction): the members' spread of the
*change* is zero at the reference and grows in the directions the proxies cannot tell apart, so it is a
trust region around each reference whose radius follows the surrogates' certainty. Taking the worst
reference, the optimizer moves weight only where the surrogates agree the move beats every reference
(L(prior) re-anchors J at the natural mix's predicted loss; with the prior as the only reference and
κ = 0, J is the predicted loss plus the KL pull). The KL pull (β) and the hard trust region (κ_KL) keep the
answer where the proxies were sampled: far outside it a log-linear law extrapolates to losses no proxy
came near. Olmix bounds the same divergence for the same reason.

Two methods:

- ``slsqp``: sequential least squares (scipy) from several feasible starts, with analytic gradients of
  differentiable surrogates (log-linear, additive, linear); the max over references is its epigraph
  (minimise t subject to t ≥ each reference's bound).
- ``topk``: score many sampled feasible mixtures by J and average the best k (RegMix, Liu et al. 2024,
  §3, averages its top-100 of 100k simulated mixtures); works for any surrogate, trees included, and the
  average of feasible mixtures is feasible because the constraints are convex.

Shape legend: K leaves, N mixtures, G capability groups, B bootstrap members, R reference mixes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import minimize

from lagoon.automix.ensemble import EnsembleLoss
from lagoon.automix.sampling import sample_mixtures
from lagoon.automix.space import MixtureSpace, kl_divergence, project_to_caps
from lagoon.automix.surrogate import Surrogate

OptimizerMethod = Literal["slsqp", "topk"]
# Share of the mixture moved onto one leaf when measuring that leaf's effect on a group (interactions).
INTERACTION_STEP = 0.1
# Smallest weight inside log() of the KL gradient; keeps ∂KL/∂w finite at the simplex's faces.
KL_FLOOR = 1e-12
# SLSQP starts: the prior and the best sampled candidates (the objective need not be convex).
SLSQP_STARTS = 3
# Smallest spread used in the gradient of the uncertainty term (its cone at the prior has no gradient).
SPREAD_FLOOR = 1e-9


@dataclass
class Objective:
    """The weighted predicted loss, its pessimistic bound against reference mixes, and the KL pull."""

    surrogates: dict[str, Surrogate]
    group_weights: dict[str, float]
    """λ_g, one per surrogate."""
    prior: np.ndarray
    kl_strength: float
    ensemble: list[dict[str, Surrogate]] = field(default_factory=list)
    """Bootstrap members (each a surrogate per group); empty: no uncertainty term."""
    uncertainty_weight: float = 0.0
    """κ: standard deviations of the members' predicted change from a reference added to that change."""
    references: list[np.ndarray] = field(default_factory=list)
    """[K] mixes the result must beat with confidence; empty: the prior alone."""

    def __post_init__(self) -> None:
        self.references = [np.asarray(r, dtype=np.float64) for r in self.references] or [self.prior]
        self._reference_loss = [float(self.loss(r)[0]) for r in self.references]
        self._prior_loss = float(self.loss(self.prior)[0])
        self._members = EnsembleLoss(self.ensemble, self.group_weights)
        self._members_at_references_BR = self._members.loss(np.stack(self.references)) if self.ensemble else None
        self._cache: tuple[bytes, np.ndarray] | None = None  # SLSQP asks for the same point's bounds repeatedly

    def predict(self, weights_NK: np.ndarray) -> dict[str, np.ndarray]:
        weights_NK = np.atleast_2d(weights_NK)
        return {group: s.predict(weights_NK) for group, s in self.surrogates.items()}

    def loss(self, weights_NK: np.ndarray) -> np.ndarray:
        """[N] L(w) = Σ λ_g ŷ_g(w): the part of J that the validation runs measure."""
        predicted = self.predict(weights_NK)
        return sum(self.group_weights[g] * predicted[g] for g in self.surrogates)

    def member_changes(self, weights_NK: np.ndarray, reference_K: np.ndarray | None = None) -> np.ndarray:
        """[B, N] each member's L_b(w) − L_b(reference) (default reference: the prior)."""
        weights_NK = np.atleast_2d(weights_NK)
        reference_K = self.prior if reference_K is None else reference_K
        return self._members.loss(weights_NK) - self._members.loss(reference_K[None])

    def spread(self, weights_NK: np.ndarray, reference_K: np.ndarray | None = None) -> np.ndarray:
        """[N] standard deviation over members of the predicted change from the reference (0 without members)."""
        if not self.ensemble:
            return np.zeros(len(np.atleast_2d(weights_NK)))
        return self.member_changes(weights_NK, reference_K).std(0, ddof=1)

    def bounds(self, weights_NK: np.ndarray) -> np.ndarray:
        """[R, N] per reference r: L(w) − L(r) + κ · spread_r(w), the pessimistic predicted change."""
        weights_NK = np.atleast_2d(np.asarray(weights_NK, dtype=np.float64))
        key = weights_NK.tobytes()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        loss_N = self.loss(weights_NK)
        bounds_RN = loss_N[None] - np.asarray(self._reference_loss)[:, None]
        if self.uncertainty_weight and self.ensemble:
            members_BN = self._members.loss(weights_NK)
            for index in range(len(self.references)):
                changes_BN = members_BN - self._members_at_references_BR[:, index:index + 1]
                bounds_RN[index] += self.uncertainty_weight * changes_BN.std(0, ddof=1)
        self._cache = (key, bounds_RN)
        return bounds_RN

    def value(self, weights_NK: np.ndarray) -> np.ndarray:
        """[N] J(w)."""
        weights_NK = np.atleast_2d(weights_NK)
        return (self.bounds(weights_NK).max(0) + self._prior_loss
                + self.kl_strength * kl_divergence(weights_NK, self.prior))

    def bound_gradient(self, weights_K: np.ndarray, reference: int) -> np.ndarray:
        """[K] ∂/∂w of reference `reference`'s bound."""
        grad_K = sum(self.group_weights[g] * s.gradient(weights_K) for g, s in self.surrogates.items())
        if self.uncertainty_weight and self.ensemble:
            changes_B = self._members.loss(weights_K[None])[:, 0] - self._members_at_references_BR[:, reference]
            grads_BK = self._members.gradient(weights_K)
            centred_B = changes_B - changes_B.mean()
            # d sd / dw = Σ_b (d_b − d̄)(∇d_b − ∇d̄) / ((B − 1) sd); sd is floored where every member agrees.
            spread = np.sqrt(max(float((centred_B ** 2).sum()) / (len(changes_B) - 1), SPREAD_FLOOR ** 2))
            grad_K = grad_K + self.uncertainty_weight * (centred_B @ (grads_BK - grads_BK.mean(0))) / (
                (len(changes_B) - 1) * spread)
        return grad_K

    def kl_gradient(self, weights_K: np.ndarray) -> np.ndarray:
        return self.kl_strength * (np.log(np.maximum(weights_K, KL_FLOOR) / self.prior) + 1.0)

    def gradient(self, weights_K: np.ndarray) -> np.ndarray:
        """[K] ∂J/∂w (the active reference's bound where several tie)."""
        active = int(self.bounds(weights_K).argmax(0)[0])
        return self.bound_gradient(weights_K, active) + self.kl_gradient(weights_K)

    @property
    def differentiable(self) -> bool:
        members = [s for member in self.ensemble for s in member.values()]
        return all(s.differentiable for s in [*self.surrogates.values(), *members])


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
        starts = [space.prior, *pool_NK[np.argsort(scores_N)[:SLSQP_STARTS - 1]]]
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
    """SLSQP on the epigraph of J: x = (w, t), minimise t + β·KL(w) with t ≥ every reference's bound."""
    k = space.size
    constraints = [{"type": "eq", "fun": lambda x: x[:k].sum() - 1.0,
                    "jac": lambda x: np.concatenate([np.ones(k), [0.0]])}]
    for index in range(len(objective.references)):
        constraints.append({
            "type": "ineq", "fun": lambda x, i=index: x[k] - objective.bounds(x[:k])[i, 0],
            "jac": lambda x, i=index: np.concatenate([-objective.bound_gradient(x[:k], i), [1.0]])})
    if max_kl is not None:
        constraints.append({
            "type": "ineq", "fun": lambda x: max_kl - kl_divergence(np.maximum(x[:k], 0.0)[None], space.prior)[0],
            "jac": lambda x: np.concatenate([-(np.log(np.maximum(x[:k], KL_FLOOR) / space.prior) + 1.0), [0.0]])})
    start_K = project_to_caps(start_K, space.caps)
    start = np.concatenate([start_K, [float(objective.bounds(start_K).max())]])

    def value(x):
        return float(x[k] + objective.kl_strength * kl_divergence(np.maximum(x[:k], 0.0)[None], space.prior)[0])

    result = minimize(
        value, start, jac=lambda x: np.concatenate([objective.kl_gradient(x[:k]), [1.0]]), method="SLSQP",
        bounds=[(0.0, float(cap)) for cap in space.caps] + [(None, None)], constraints=constraints,
        options={"maxiter": 300, "ftol": 1e-10})
    return project_to_caps(np.clip(result.x[:k], 0.0, None), space.caps)


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
