"""Surrogates: regressors from a mixture (weights over leaves) to one capability group's loss.

Three kinds, one per capability group each:

- ``loglinear`` (default): ``y = exp(c) + exp(tᵀw)``, the data mixing law of Ye et al. 2024 ("Data Mixing
  Laws", Eq. 5: L(r) = c + k·exp(Σ t_j r_j)) in the parameterisation Olmix uses, where exp(c) is the loss no
  mixture removes and the scale k is absorbed into t because the weights sum to one. Positive t_j: more of
  leaf j raises the group's loss.
- ``linear``: ``y = βᵀw`` (no intercept: Σw = 1 makes it redundant).
- ``lightgbm``: gradient-boosted trees, as RegMix (Liu et al. 2024, §3) uses.

Leaves are domain × quality bucket, and buckets of one domain act alike, so the log-linear and linear
surrogates shrink each leaf's coefficient toward the mean of its domain's (a ridge penalty on the
within-domain deviations; with no domains given, toward the mean of all leaves). With ~60 proxies and ~18
leaves this is what keeps a 19-parameter fit from chasing noise. The penalty's strength is chosen per fit
by an inner K-fold cross-validation on the fit's own training mixtures, so an outer cross-validation that
calls `fit` stays honest.

Shape legend: N mixtures, K leaves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.optimize import least_squares

SurrogateKind = Literal["loglinear", "linear", "lightgbm"]

# Fractions of the smallest observed loss tried as the irreducible part exp(c) of a log-linear fit (the
# floor is profiled over this grid, then refined; 0.99 allows losses that vary little across mixtures).
LOGLINEAR_FLOOR_GRID = (0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)
# Inner folds used to choose the shrinkage strength among `SurrogateOptions.ridge`.
INNER_FOLDS = 4
# Weight of the pull of each domain's mean coefficient toward the overall mean, relative to the within-domain
# penalty: weak, so domains differ freely, but enough to fix a domain no proxy has sampled.
DOMAIN_PULL = 1e-3


@dataclass
class SurrogateOptions:
    """Hyper-parameters of the surrogate kinds (the `[automix.surrogate]` config section carries them)."""

    ridge: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    """Candidate shrinkage strengths λ (one value: used as is; several: chosen by inner cross-validation)."""
    leaf_domains: tuple[int, ...] | None = None
    """Domain index of every leaf (coefficients shrink toward their domain's mean), or None."""
    lightgbm_estimators: int = 400
    lightgbm_learning_rate: float = 0.03
    lightgbm_num_leaves: int = 8
    lightgbm_min_child_samples: int = 4
    seed: int = 0


class Surrogate:
    """A fitted regressor ŷ(w) for one capability group."""

    kind: SurrogateKind
    differentiable: bool = True

    def fit(self, weights_NK: np.ndarray, targets_N: np.ndarray) -> "Surrogate":
        raise NotImplementedError

    def predict(self, weights_NK: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def gradient(self, weights_K: np.ndarray) -> np.ndarray:
        """[K] ∂ŷ/∂w at one mixture (differentiable kinds only)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


def shrinkage_matrix(k: int, leaf_domains: tuple[int, ...] | None) -> np.ndarray:
    """[R, K] rows whose squared norm is the penalty: within-domain deviations, plus a weak pull of the
    domain means toward the overall mean (or, without domains, deviations from the overall mean)."""
    if leaf_domains is None:
        return np.eye(k) - 1.0 / k
    domains = np.asarray(leaf_domains)
    assert len(domains) == k
    same_KK = (domains[:, None] == domains[None, :]).astype(np.float64)
    within_KK = np.eye(k) - same_KK / same_KK.sum(1, keepdims=True)
    between_KK = (same_KK / same_KK.sum(1, keepdims=True)) - 1.0 / k
    return np.concatenate([within_KK, np.sqrt(DOMAIN_PULL) * between_KK])


def _choose_ridge(make: Any, options: SurrogateOptions, weights_NK: np.ndarray, targets_N: np.ndarray) -> float:
    """The candidate λ with the lowest inner cross-validated squared error (ties: the larger λ)."""
    candidates = sorted(options.ridge)
    if len(candidates) == 1 or len(targets_N) < 2 * INNER_FOLDS:
        return candidates[len(candidates) // 2] if len(candidates) > 1 else candidates[0]
    order = np.random.default_rng(options.seed).permutation(len(targets_N))
    parts = np.array_split(order, INNER_FOLDS)
    errors = []
    for ridge in candidates:
        total = 0.0
        for held_out in parts:
            train = np.setdiff1d(order, held_out)
            model = make(ridge).fit_fixed(weights_NK[train], targets_N[train])
            total += float(((model.predict(weights_NK[held_out]) - targets_N[held_out]) ** 2).sum())
        errors.append(total)
    best = min(errors)
    return max(r for r, e in zip(candidates, errors) if e <= best * (1 + 1e-9))


@dataclass
class LogLinearSurrogate(Surrogate):
    """``y = exp(c) + exp(tᵀw)``.

    Fit, for a given λ, of ``mean_i ((ŷ_i − y_i) / sd(y))² + λ · mean_r (P t)_r²`` (P from `shrinkage_matrix`):

    1. Profile the floor: for each fraction q in `LOGLINEAR_FLOOR_GRID`, exp(c) = q·min(y) makes the model
       linear in log space, ``log(y − exp(c)) = tᵀw``; weighting each proxy by (y − exp(c))² turns that log
       residual into (to first order) its residual in y, so t is a closed-form weighted ridge solution.
       Keep the q whose (c, t) has the lowest exact objective.
    2. Refine (c, t) jointly by trust-region nonlinear least squares (scipy ``least_squares``, analytic
       Jacobian) from there (`fit` only; the inner cross-validation that picks λ uses step 1 alone).
    """

    options: SurrogateOptions = field(default_factory=SurrogateOptions)
    floor: float = 0.0
    """c: log of the irreducible loss."""
    slopes: np.ndarray | None = None
    """[K] t."""
    ridge: float | None = None
    """The λ the fit used."""
    kind: SurrogateKind = "loglinear"

    def fit(self, weights_NK, targets_N):
        weights_NK = np.asarray(weights_NK, dtype=np.float64)
        targets_N = np.asarray(targets_N, dtype=np.float64)
        assert (targets_N > 0).all(), "log-linear surrogates need positive losses"
        ridge = _choose_ridge(lambda r: LogLinearSurrogate(self.options, ridge=r), self.options, weights_NK, targets_N)
        return LogLinearSurrogate(self.options, ridge=ridge).fit_fixed(weights_NK, targets_N, into=self, refine=True)

    def fit_fixed(self, weights_NK, targets_N, into: "LogLinearSurrogate | None" = None,
                  refine: bool = False) -> "LogLinearSurrogate":
        n, k = weights_NK.shape
        scale = max(float(targets_N.std()), 1e-3 * float(np.abs(targets_N).mean())) * np.sqrt(n)
        penalty_RK = shrinkage_matrix(k, self.options.leaf_domains) * np.sqrt((self.ridge or 0.0) / k)
        penalty_KK = penalty_RK.T @ penalty_RK + 1e-12 * np.eye(k)

        def residuals(theta):
            c, t_K = theta[0], theta[1:]
            fitted_N = np.exp(c) + np.exp(weights_NK @ t_K)
            return np.concatenate([(fitted_N - targets_N) / scale, penalty_RK @ t_K])

        def jacobian(theta):
            c, t_K = theta[0], theta[1:]
            varying_N = np.exp(weights_NK @ t_K)
            fit_rows = np.concatenate([np.full((n, 1), np.exp(c)), varying_N[:, None] * weights_NK], axis=1) / scale
            penalty_rows = np.concatenate([np.zeros((len(penalty_RK), 1)), penalty_RK], axis=1)
            return np.concatenate([fit_rows, penalty_rows])

        best_theta, best_cost = None, np.inf
        for fraction in LOGLINEAR_FLOOR_GRID:
            floor = max(fraction * targets_N.min(), 1e-6 * targets_N.min())
            remaining_N = targets_N - floor
            weighted_NK = weights_NK * (remaining_N / scale)[:, None]
            slopes_K = np.linalg.solve(weighted_NK.T @ weighted_NK + penalty_KK,
                                       weighted_NK.T @ (np.log(remaining_N) * remaining_N / scale))
            theta = np.concatenate([[np.log(floor)], slopes_K])
            cost = float((residuals(theta) ** 2).sum())
            if cost < best_cost:
                best_theta, best_cost = theta, cost
        if refine:
            best_theta = least_squares(residuals, best_theta, jac=jacobian, method="trf", max_nfev=200).x
        target = into if into is not None else self
        target.ridge = self.ridge
        target.floor, target.slopes = float(best_theta[0]), best_theta[1:].copy()
        return target

    def predict(self, weights_NK):
        weights_NK = np.asarray(weights_NK, dtype=np.float64)
        return np.exp(self.floor) + np.exp(weights_NK @ self.slopes)

    def gradient(self, weights_K):
        return np.exp(np.asarray(weights_K) @ self.slopes) * self.slopes

    def to_dict(self):
        return {"kind": self.kind, "floor": self.floor, "slopes": self.slopes.tolist(), "ridge": self.ridge}


@dataclass
class LinearSurrogate(Surrogate):
    """``y = βᵀw``: least squares with the same shrinkage as the log-linear kind (closed form)."""

    options: SurrogateOptions = field(default_factory=SurrogateOptions)
    coefficients: np.ndarray | None = None
    """[K] β."""
    ridge: float | None = None
    kind: SurrogateKind = "linear"

    def fit(self, weights_NK, targets_N):
        weights_NK = np.asarray(weights_NK, dtype=np.float64)
        targets_N = np.asarray(targets_N, dtype=np.float64)
        ridge = _choose_ridge(lambda r: LinearSurrogate(self.options, ridge=r), self.options, weights_NK, targets_N)
        return LinearSurrogate(self.options, ridge=ridge).fit_fixed(weights_NK, targets_N, into=self)

    def fit_fixed(self, weights_NK, targets_N, into: "LinearSurrogate | None" = None) -> "LinearSurrogate":
        n, k = weights_NK.shape
        variance = max(float(targets_N.var()), 1e-12)
        penalty_RK = shrinkage_matrix(k, self.options.leaf_domains)
        # Same objective as the log-linear kind: mean squared residual / var(y) + λ · mean penalty².
        gram_KK = weights_NK.T @ weights_NK / (n * variance) + (self.ridge or 0.0) / k * penalty_RK.T @ penalty_RK
        gram_KK += 1e-12 * np.eye(k)
        target = into if into is not None else self
        target.ridge = self.ridge
        target.coefficients = np.linalg.solve(gram_KK, weights_NK.T @ targets_N / (n * variance))
        return target

    def predict(self, weights_NK):
        return np.asarray(weights_NK, dtype=np.float64) @ self.coefficients

    def gradient(self, weights_K):
        return self.coefficients.copy()

    def to_dict(self):
        return {"kind": self.kind, "coefficients": self.coefficients.tolist(), "ridge": self.ridge}


@dataclass
class LightGBMSurrogate(Surrogate):
    """Gradient-boosted regression trees on the raw weights (piecewise constant: not differentiable)."""

    options: SurrogateOptions = field(default_factory=SurrogateOptions)
    booster: Any = None
    kind: SurrogateKind = "lightgbm"
    differentiable: bool = False

    def fit(self, weights_NK, targets_N):
        import lightgbm

        params = {
            "objective": "regression", "learning_rate": self.options.lightgbm_learning_rate,
            "num_leaves": self.options.lightgbm_num_leaves,
            "min_data_in_leaf": self.options.lightgbm_min_child_samples, "min_data_in_bin": 1,
            "seed": self.options.seed, "deterministic": True, "force_row_wise": True, "num_threads": 1,
            "verbosity": -1,
        }
        data = lightgbm.Dataset(np.asarray(weights_NK, dtype=np.float64), np.asarray(targets_N, dtype=np.float64),
                                params={"min_data_in_bin": 1, "verbosity": -1})
        self.booster = lightgbm.train(params, data, num_boost_round=self.options.lightgbm_estimators)
        return self

    def predict(self, weights_NK):
        return np.asarray(self.booster.predict(np.asarray(weights_NK, dtype=np.float64)), dtype=np.float64)

    def to_dict(self):
        return {"kind": self.kind, "model": self.booster.model_to_string()}


def make_surrogate(kind: SurrogateKind, options: SurrogateOptions | None = None) -> Surrogate:
    options = options or SurrogateOptions()
    if kind == "loglinear":
        return LogLinearSurrogate(options)
    if kind == "linear":
        return LinearSurrogate(options)
    if kind == "lightgbm":
        return LightGBMSurrogate(options)
    raise AssertionError(f"unknown surrogate kind {kind!r}")


def surrogate_from_dict(data: dict[str, Any]) -> Surrogate:
    """Rebuild a fitted surrogate written by `Surrogate.to_dict`."""
    kind = data["kind"]
    if kind == "loglinear":
        return LogLinearSurrogate(floor=float(data["floor"]), slopes=np.asarray(data["slopes"], dtype=np.float64),
                                  ridge=data.get("ridge"))
    if kind == "linear":
        return LinearSurrogate(coefficients=np.asarray(data["coefficients"], dtype=np.float64), ridge=data.get("ridge"))
    if kind == "lightgbm":
        import lightgbm

        return LightGBMSurrogate(booster=lightgbm.Booster(model_str=data["model"]))
    raise AssertionError(f"unknown surrogate kind {kind!r}")


def dumps(surrogates: dict[str, Surrogate]) -> str:
    return json.dumps({group: s.to_dict() for group, s in surrogates.items()}, indent=1)


def loads(text: str) -> dict[str, Surrogate]:
    return {group: surrogate_from_dict(data) for group, data in json.loads(text).items()}
