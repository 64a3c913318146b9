"""Surrogates: regressors from a mixture (weights over leaves) to one capability group's loss.

Three kinds, one per capability group each:

- ``loglinear`` (default): ``y = exp(c) + exp(tᵀw)``, the data mixing law of Ye et al. 2024 ("Data Mixing
  Laws", Eq. 5: L(r) = c + k·exp(Σ t_j r_j)) in the parameterisation Olmix uses, where exp(c) is the loss no
  mixture removes and the scale k is absorbed into t because the weights sum to one. Positive t_j: more of
  leaf j raises the group's loss.
- ``linear``: ``y = βᵀw`` (no intercept: Σw = 1 makes it redundant).
- ``lightgbm``: gradient-boosted trees, as RegMix (Liu et al. 2024, §3) uses.

Shape legend: N mixtures, K leaves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.optimize import least_squares

SurrogateKind = Literal["loglinear", "linear", "lightgbm"]

# Fractions of the smallest observed loss tried as the irreducible part exp(c) when starting the log-linear
# fit; the log of what remains is linear in w, which gives t's starting point by least squares.
LOGLINEAR_FLOOR_STARTS = (0.0, 0.3, 0.6, 0.8, 0.9, 0.95)
# Huber threshold relative to the median loss: Olmix / mixinglaws fit with Huber δ = 0.01 on losses of ~1-3
# nats, i.e. residuals beyond ~0.5% of the loss are treated as outliers.
HUBER_RELATIVE_DELTA = 0.005


@dataclass
class SurrogateOptions:
    """Hyper-parameters of the surrogate kinds (the `[automix.surrogate]` config section carries them)."""

    ridge: float = 1e-6
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


@dataclass
class LogLinearSurrogate(Surrogate):
    """``y = exp(c) + exp(tᵀw)``.

    Fit: for each floor fraction q in `LOGLINEAR_FLOOR_STARTS`, set exp(c) = q·min(y), start t from the
    least-squares solution of ``log(y − exp(c)) = tᵀw``, then refine (c, t) jointly by trust-region
    nonlinear least squares (scipy ``least_squares``, analytic Jacobian) with a Huber loss and a small ridge
    on t's deviation from its mean; keep the start with the lowest robust cost.
    """

    options: SurrogateOptions = field(default_factory=SurrogateOptions)
    floor: float = 0.0
    """c: log of the irreducible loss."""
    slopes: np.ndarray | None = None
    """[K] t."""
    kind: SurrogateKind = "loglinear"

    def fit(self, weights_NK, targets_N):
        weights_NK = np.asarray(weights_NK, dtype=np.float64)
        targets_N = np.asarray(targets_N, dtype=np.float64)
        n, k = weights_NK.shape
        assert n >= 2 and (targets_N > 0).all(), "log-linear surrogates need positive losses"
        delta = HUBER_RELATIVE_DELTA * float(np.median(targets_N))
        ridge = np.sqrt(self.options.ridge * n)
        centre_KK = np.eye(k) - 1.0 / k

        def residuals(theta):
            c, t_K = theta[0], theta[1:]
            return np.concatenate([np.exp(c) + np.exp(weights_NK @ t_K) - targets_N, ridge * centre_KK @ t_K])

        def jacobian(theta):
            c, t_K = theta[0], theta[1:]
            varying_N = np.exp(weights_NK @ t_K)
            fit_rows = np.concatenate([np.full((n, 1), np.exp(c)), varying_N[:, None] * weights_NK], axis=1)
            ridge_rows = np.concatenate([np.zeros((k, 1)), ridge * centre_KK], axis=1)
            return np.concatenate([fit_rows, ridge_rows])

        best = None
        for fraction in LOGLINEAR_FLOOR_STARTS:
            floor = max(fraction, 1e-3) * targets_N.min()
            start_K = np.linalg.lstsq(weights_NK, np.log(targets_N - floor), rcond=None)[0]
            result = least_squares(residuals, np.concatenate([[np.log(floor)], start_K]), jac=jacobian,
                                   loss="huber", f_scale=delta, method="trf", max_nfev=2000)
            if best is None or result.cost < best.cost:
                best = result
        self.floor, self.slopes = float(best.x[0]), best.x[1:].copy()
        return self

    def predict(self, weights_NK):
        weights_NK = np.asarray(weights_NK, dtype=np.float64)
        return np.exp(self.floor) + np.exp(weights_NK @ self.slopes)

    def gradient(self, weights_K):
        return np.exp(np.asarray(weights_K) @ self.slopes) * self.slopes

    def to_dict(self):
        return {"kind": self.kind, "floor": self.floor, "slopes": self.slopes.tolist()}


@dataclass
class LinearSurrogate(Surrogate):
    """``y = βᵀw``, ridge-regularised least squares."""

    options: SurrogateOptions = field(default_factory=SurrogateOptions)
    coefficients: np.ndarray | None = None
    """[K] β."""
    kind: SurrogateKind = "linear"

    def fit(self, weights_NK, targets_N):
        weights_NK = np.asarray(weights_NK, dtype=np.float64)
        k = weights_NK.shape[1]
        gram_KK = weights_NK.T @ weights_NK + self.options.ridge * len(weights_NK) * np.eye(k)
        self.coefficients = np.linalg.solve(gram_KK, weights_NK.T @ np.asarray(targets_N, dtype=np.float64))
        return self

    def predict(self, weights_NK):
        return np.asarray(weights_NK, dtype=np.float64) @ self.coefficients

    def gradient(self, weights_K):
        return self.coefficients.copy()

    def to_dict(self):
        return {"kind": self.kind, "coefficients": self.coefficients.tolist()}


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
        return LogLinearSurrogate(floor=float(data["floor"]), slopes=np.asarray(data["slopes"], dtype=np.float64))
    if kind == "linear":
        return LinearSurrogate(coefficients=np.asarray(data["coefficients"], dtype=np.float64))
    if kind == "lightgbm":
        import lightgbm

        return LightGBMSurrogate(booster=lightgbm.Booster(model_str=data["model"]))
    raise AssertionError(f"unknown surrogate kind {kind!r}")


def dumps(surrogates: dict[str, Surrogate]) -> str:
    return json.dumps({group: s.to_dict() for group, s in surrogates.items()}, indent=1)


def loads(text: str) -> dict[str, Surrogate]:
    return {group: surrogate_from_dict(data) for group, data in json.loads(text).items()}
