"""The additive surrogate: one power law per domain of a group's held-out set, plus linear leaf effects.

    y(w) = βᵀw + Σ_d k_d · (S_d(w) + ε)^(−α_d),      S_d(w) = Σ_{leaves j of domain d} w_j

Why this form: a capability group's held-out set is a concatenation of documents from several domains (the
code group's holds real code, tool-use transcripts and synthetic exercises), and bits per byte of a
concatenation is exactly the byte-weighted mean of its parts' bits per byte. So the group's loss is a *sum*
over its eval domains, each part falling mostly with its own domain's share, as a power law with
diminishing returns (BiMix, Ge et al. 2024, Eq. 3: L_i ∝ r_i^(−α_i); the per-domain data scaling of
Hoffmann et al. 2022 read at a fixed budget) that explodes when the domain is absent (ε sets where). The
log-linear kind multiplies such terms (exp of a sum) and cannot represent a sum of them when several vary
at once. βᵀw (Σw = 1, so it carries the intercept) takes up what the power laws do not: transfer between
domains and which quality bucket of a domain helps, shrunk toward each domain's mean or toward the mean of
all leaves like the log-linear kind's coefficients (`shrinkage_matrix`).

Fit, for a given λ and ε, of ``mean_i ((ŷ_i − y_i) / sd(y))² + λ · mean_r (P β)_r² + λ_k · mean_d k_d²``:
for fixed exponents α the model is linear in (β, k), a closed-form ridge solution; the exponents are chosen
by coordinate descent over `EXPONENT_GRID` (variable projection: Golub & Pereyra 1973), and `fit` then
refines (β, k, α) jointly by nonlinear least squares with the analytic Jacobian.

Shape legend: N mixtures, K leaves, M power-law domains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from lagoon.automix.surrogate import Surrogate, SurrogateOptions, shrinkage_matrix

# Exponents tried for each domain's power law (coordinate descent, two passes).
EXPONENT_GRID = (0.1, 0.25, 0.5, 0.8, 1.2)
EXPONENT_BOUNDS = (0.02, 3.0)
COORDINATE_PASSES = 2
# Ridge on the power-law amplitudes relative to λ: they are few and data-determined, so only a light touch.
AMPLITUDE_PULL = 1e-3


@dataclass
class AdditiveSurrogate(Surrogate):
    """``y = βᵀw + Σ_d k_d (S_d(w) + ε)^(−α_d)`` over the domains `options.power_domains` (see the module)."""

    options: SurrogateOptions = field(default_factory=SurrogateOptions)
    coefficients: np.ndarray | None = None
    """[K] β."""
    amplitudes: np.ndarray | None = None
    """[M] k."""
    exponents: np.ndarray | None = None
    """[M] α."""
    ridge: float | None = None
    kind: str = "additive"

    # ------------------------------------------------------------------ features
    def _onehot_KM(self, k: int) -> np.ndarray:
        domains = np.asarray(self.options.feature_domains)
        assert len(domains) == k, "the additive surrogate needs every leaf's domain"
        return (domains[:, None] == np.asarray(self.options.power_domains)[None, :]).astype(np.float64)

    def shares(self, weights_NK: np.ndarray) -> np.ndarray:
        """[N, M] S_d(w) + ε."""
        weights_NK = np.asarray(weights_NK, dtype=np.float64)
        return weights_NK @ self._onehot_KM(weights_NK.shape[1]) + self.options.log_offset

    # ------------------------------------------------------------------ fitting
    def fit(self, weights_NK, targets_N):
        return self.fit_fixed(weights_NK, targets_N, refine=True)

    def fit_fixed(self, weights_NK, targets_N, into: "AdditiveSurrogate | None" = None,
                  refine: bool = False) -> "AdditiveSurrogate":
        fitted = self.fit_path(weights_NK, targets_N, [self.ridge or 0.0], refine)[0]
        target = into if into is not None else self
        target.options, target.ridge = fitted.options, self.ridge
        target.coefficients, target.amplitudes, target.exponents = fitted.coefficients, fitted.amplitudes, fitted.exponents
        return target

    def fit_path(self, weights_NK, targets_N, ridges: list[float], refine: bool = False) -> list["AdditiveSurrogate"]:
        """One fit per λ in `ridges`; every coordinate step solves all (λ, exponent) pairs in one batch."""
        weights_NK = np.asarray(weights_NK, dtype=np.float64)
        targets_N = np.asarray(targets_N, dtype=np.float64)
        n, k = weights_NK.shape
        shares_NM = self.shares(weights_NK)
        m = shares_NM.shape[1]
        scale = max(float(targets_N.std()), 1e-3 * float(np.abs(targets_N).mean())) * np.sqrt(n)
        ridges_L = np.asarray(ridges, dtype=np.float64)
        shrink_RK = shrinkage_matrix(k, self.options.leaf_domains)
        shape_RP = np.block([[shrink_RK, np.zeros((len(shrink_RK), m))],
                             [np.zeros((m, k)), np.eye(m) * np.sqrt(AMPLITUDE_PULL / max(m, 1))]])
        shape_PP = shape_RP.T @ shape_RP
        # Penalty rows scale as sqrt(λ / K) (the log-linear kind's convention).
        penalty_LPP = (ridges_L / k)[:, None, None] * shape_PP[None] + 1e-12 * np.eye(k + m)[None]

        def solve(exponents_LBM):
            """Costs [L, B] and linear parameters [L, B, P] for every λ and every exponent vector."""
            powers_LBNM = shares_NM[None, None] ** -exponents_LBM[:, :, None, :]
            design_LBNP = np.concatenate([np.broadcast_to(weights_NK, (*powers_LBNM.shape[:3], k)), powers_LBNM],
                                         axis=-1) / scale
            transposed_LBPN = design_LBNP.swapaxes(-1, -2)
            gram_LBPP = transposed_LBPN @ design_LBNP + penalty_LPP[:, None]
            linear_LBP1 = np.linalg.solve(gram_LBPP, transposed_LBPN @ (targets_N / scale)[:, None])
            residual_LBN = (design_LBNP @ linear_LBP1)[..., 0] - targets_N / scale
            linear_LBP = linear_LBP1[..., 0]
            cost_LB = (residual_LBN ** 2).sum(-1) + (linear_LBP1.swapaxes(-1, -2) @ penalty_LPP[:, None] @ linear_LBP1)[..., 0, 0]
            return np.where(np.isfinite(cost_LB), cost_LB, np.inf), linear_LBP

        grid_G = np.asarray(EXPONENT_GRID)
        exponents_LM = np.full((len(ridges_L), m), grid_G[len(grid_G) // 2])
        cost_L1, linear_L1P = solve(exponents_LM[:, None])
        best_L, linear_LP = cost_L1[:, 0], linear_L1P[:, 0]
        rows = np.arange(len(ridges_L))
        for _ in range(COORDINATE_PASSES if m else 0):
            for d in range(m):
                trials_LGM = np.repeat(exponents_LM[:, None], len(grid_G), axis=1)
                trials_LGM[:, :, d] = grid_G
                cost_LG, linear_LGP = solve(trials_LGM)
                pick_L = cost_LG.argmin(1)
                better_L = cost_LG[rows, pick_L] < best_L
                exponents_LM = np.where(better_L[:, None], trials_LGM[rows, pick_L], exponents_LM)
                linear_LP = np.where(better_L[:, None], linear_LGP[rows, pick_L], linear_LP)
                best_L = np.where(better_L, cost_LG[rows, pick_L], best_L)

        fits = []
        for index, ridge in enumerate(ridges):
            linear_P, exponents_M = linear_LP[index], exponents_LM[index]
            if refine and m:
                penalty_RP = shape_RP * np.sqrt(ridge / k)
                linear_P, exponents_M = self._refine(weights_NK, targets_N, shares_NM, scale, penalty_RP, linear_P,
                                                     exponents_M)
            fits.append(AdditiveSurrogate(self.options, coefficients=linear_P[:k].copy(),
                                          amplitudes=linear_P[k:].copy(), exponents=np.array(exponents_M, dtype=float),
                                          ridge=ridge))
        return fits

    @staticmethod
    def _refine(weights_NK, targets_N, shares_NM, scale, penalty_RP, linear_P, exponents_M):
        """Joint nonlinear least squares over (β, k, log α) from the coordinate-descent solution."""
        k, m = weights_NK.shape[1], shares_NM.shape[1]
        log_shares_NM = np.log(shares_NM)

        def unpack(theta):
            return theta[: k + m], np.exp(theta[k + m:])

        def residuals(theta):
            linear_P, exponents_M = unpack(theta)
            powers_NM = shares_NM ** -exponents_M
            fitted_N = weights_NK @ linear_P[:k] + powers_NM @ linear_P[k:]
            return np.concatenate([(fitted_N - targets_N) / scale, penalty_RP @ linear_P])

        def jacobian(theta):
            linear_P, exponents_M = unpack(theta)
            powers_NM = shares_NM ** -exponents_M
            # ∂/∂log α_d of k_d S^(−α_d) = −k_d α_d log(S) S^(−α_d)
            exponent_rows_NM = -linear_P[k:] * exponents_M * log_shares_NM * powers_NM
            fit_rows = np.concatenate([weights_NK, powers_NM, exponent_rows_NM], axis=1) / scale
            penalty_rows = np.concatenate([penalty_RP, np.zeros((len(penalty_RP), m))], axis=1)
            return np.concatenate([fit_rows, penalty_rows])

        low, high = np.log(EXPONENT_BOUNDS[0]), np.log(EXPONENT_BOUNDS[1])
        start = np.concatenate([linear_P, np.clip(np.log(exponents_M), low, high)])
        bounds = (np.concatenate([np.full(k + m, -np.inf), np.full(m, low)]),
                  np.concatenate([np.full(k + m, np.inf), np.full(m, high)]))
        theta = least_squares(residuals, start, jac=jacobian, bounds=bounds, method="trf", max_nfev=200).x
        return unpack(theta)

    # ------------------------------------------------------------------ use
    def predict(self, weights_NK):
        weights_NK = np.asarray(weights_NK, dtype=np.float64)
        return weights_NK @ self.coefficients + (self.shares(weights_NK) ** -self.exponents) @ self.amplitudes

    def gradient(self, weights_K):
        weights_K = np.asarray(weights_K, dtype=np.float64)
        shares_M = self.shares(weights_K[None])[0]
        per_domain_M = -self.amplitudes * self.exponents * shares_M ** (-self.exponents - 1)
        return self.coefficients + self._onehot_KM(len(weights_K)) @ per_domain_M

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "coefficients": self.coefficients.tolist(), "amplitudes": self.amplitudes.tolist(),
                "exponents": self.exponents.tolist(), "ridge": self.ridge, "log_offset": self.options.log_offset,
                "feature_domains": list(self.options.feature_domains),
                "power_domains": list(self.options.power_domains)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdditiveSurrogate":
        options = SurrogateOptions(log_offset=float(data["log_offset"]), feature_domains=tuple(data["feature_domains"]),
                                   power_domains=tuple(data["power_domains"]))
        return cls(options, coefficients=np.asarray(data["coefficients"], dtype=np.float64),
                   amplitudes=np.asarray(data["amplitudes"], dtype=np.float64),
                   exponents=np.asarray(data["exponents"], dtype=np.float64), ridge=data.get("ridge"))
