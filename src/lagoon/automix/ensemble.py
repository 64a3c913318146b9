"""The bootstrap members of every group's surrogate, evaluated together.

The optimizer asks the whole ensemble for the objective and its gradient at every step, so members of one
group that share a form (they do: bootstrap refits of the chosen candidate) are stacked into one array
per parameter and evaluated in a single matrix product: log-linear members as exp(c_b) + exp(X θ_b),
additive ones as W β_b + Σ_d k_db (S_d + ε)^(−α_db). Other kinds (and mixed forms) fall back to one member
at a time; `EnsembleLoss.reference_loss` is that per-member loop, kept as the reference the stacked path is
tested against.

Shape legend: N mixtures, K leaves, F features, M power-law domains, B members.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lagoon.automix.surrogate import LogLinearSurrogate, Surrogate


class _Stack:
    """One group's members, stacked where their form allows it."""

    def __init__(self, members: list[Surrogate]):
        from lagoon.automix.additive import AdditiveSurrogate

        self.members = members
        first = members[0]
        self.kind = "loop"
        if all(isinstance(m, LogLinearSurrogate) and m.options == first.options for m in members):
            self.kind = "loglinear"
            self.floors_B = np.exp(np.array([m.floor for m in members]))
            self.slopes_FB = np.stack([m.slopes for m in members], axis=1)
        elif all(isinstance(m, AdditiveSurrogate) and m.options == first.options for m in members):
            self.kind = "additive"
            self.coefficients_KB = np.stack([m.coefficients for m in members], axis=1)
            self.amplitudes_MB = np.stack([m.amplitudes for m in members], axis=1)
            self.exponents_MB = np.stack([m.exponents for m in members], axis=1)

    def predict(self, weights_NK: np.ndarray) -> np.ndarray:
        """[B, N]."""
        first = self.members[0]
        if self.kind == "loglinear":
            return (self.floors_B[:, None] + np.exp(first.features(weights_NK) @ self.slopes_FB).T)
        if self.kind == "additive":
            shares_NM = first.shares(weights_NK)
            powers_BNM = shares_NM[None] ** -self.exponents_MB.T[:, None, :]
            return (weights_NK @ self.coefficients_KB).T + np.einsum("bnm,mb->bn", powers_BNM, self.amplitudes_MB)
        return np.stack([m.predict(weights_NK) for m in self.members])

    def gradient(self, weights_K: np.ndarray) -> np.ndarray:
        """[B, K] ∂ŷ_b/∂w at one mixture."""
        first = self.members[0]
        if self.kind == "loglinear":
            from lagoon.automix.surrogate import log_feature_jacobian

            varying_B = np.exp(first.features(weights_K[None])[0] @ self.slopes_FB)
            jacobian_FK = np.concatenate([np.eye(len(weights_K)), log_feature_jacobian(weights_K, first.options)])
            return varying_B[:, None] * (self.slopes_FB.T @ jacobian_FK)
        if self.kind == "additive":
            shares_M = first.shares(weights_K[None])[0]
            per_domain_BM = -(self.amplitudes_MB * self.exponents_MB * shares_M[:, None] ** (-self.exponents_MB - 1)).T
            return self.coefficients_KB.T + per_domain_BM @ first._onehot_KM(len(weights_K)).T
        return np.stack([m.gradient(weights_K) for m in self.members])


@dataclass
class EnsembleLoss:
    """Σ_g λ_g ŷ_g^b(w) for every member b, from per-member dicts {group: surrogate}."""

    members: list[dict[str, Surrogate]]
    group_weights: dict[str, float]

    def __post_init__(self) -> None:
        groups = list(self.members[0]) if self.members else []
        self._stacks = {g: _Stack([member[g] for member in self.members]) for g in groups}

    def __len__(self) -> int:
        return len(self.members)

    def loss(self, weights_NK: np.ndarray) -> np.ndarray:
        """[B, N]."""
        weights_NK = np.atleast_2d(np.asarray(weights_NK, dtype=np.float64))
        return sum(self.group_weights[g] * stack.predict(weights_NK) for g, stack in self._stacks.items())

    def gradient(self, weights_K: np.ndarray) -> np.ndarray:
        """[B, K]."""
        weights_K = np.asarray(weights_K, dtype=np.float64)
        return sum(self.group_weights[g] * stack.gradient(weights_K) for g, stack in self._stacks.items())

    def reference_loss(self, weights_NK: np.ndarray) -> np.ndarray:
        """[B, N] member by member (the reference path of `loss`)."""
        weights_NK = np.atleast_2d(np.asarray(weights_NK, dtype=np.float64))
        return np.stack([sum(self.group_weights[g] * s.predict(weights_NK) for g, s in member.items())
                         for member in self.members])
