"""Surrogates: regressors from a mixture (weights over leaves) to one capability group's loss.

Four kinds, one per capability group each:

- ``loglinear`` (default): ``y = exp(c) + exp(tᵀw + sᵀu(w))``. With no ``u`` this is the data mixing law of
  Ye et al. 2024 ("Data Mixing Laws", Eq. 5: L(r) = c + k·exp(Σ t_j r_j)) in the parameterisation Olmix uses,
  where exp(c) is the loss no mixture removes and the scale k is absorbed into t because the weights sum to
  one. Positive t_j: more of leaf j raises the group's loss. The optional log features u are log shares,
  ``u_j = log(w_j + ε)`` per leaf or ``u_d = log(W_d + ε)`` per domain (W_d: the domain's total weight), which
  make the law a power law in each share near zero, ``y − exp(c) ∝ Π (w_j + ε)^{s_j}``: the form of BiMix
  (Ge et al. 2024, "BiMix: A Bivariate Data Mixing Law", Eq. 3: L_i ∝ r_i^{−α_i}) and of RegMix's
  observation that returns diminish in a domain's own share. A group whose loss explodes when its data is
  absent needs them; one that moves smoothly does not, and the selection (`lagoon.automix.selection`)
  decides per group.
- ``additive``: ``y = βᵀw + Σ_d k_d (S_d + ε)^(−α_d)``, a power law per domain of the group's held-out set
  plus linear leaf effects (`lagoon.automix.additive`): a sum where the log-linear kind has a product.
- ``linear``: ``y = βᵀw`` (no intercept: Σw = 1 makes it redundant).
- ``lightgbm``: gradient-boosted trees, as RegMix (Liu et al. 2024, §3) uses.

Leaves are domain × quality bucket, and buckets of one domain often act alike, so the log-linear and
linear surrogates can shrink each leaf's coefficient toward the mean of its domain's (a ridge penalty on the
within-domain deviations) or, to express leaf-level effects (a code group that cares which quality bucket
its code comes from), toward the mean of all leaves. The strength λ, the shrinkage target and the log
features are hyper-parameters: `lagoon.automix.selection` chooses them per group by cross-validation on the
fit's own training mixtures, so an outer cross-validation stays honest. `fit` alone (a fixed form) picks
only λ, by an inner K-fold cross-validation.

Shape legend: N mixtures, K leaves, D domains, M log features (0, K or D), F = K + M features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.optimize import least_squares

SurrogateKind = Literal["loglinear", "additive", "linear", "lightgbm"]
LogFeatures = Literal["none", "leaf", "domain"]

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
    log_features: LogFeatures = "none"
    """Log-share features of the log-linear kind: none, one per leaf, or one per domain (needs
    `feature_domains`)."""
    log_offset: float = 0.01
    """ε in log(w + ε): the share below which a leaf (or domain) counts as absent."""
    feature_domains: tuple[int, ...] | None = None
    """Domain index of every leaf for the per-domain log features (independent of the shrinkage target)."""
    power_domains: tuple[int, ...] = ()
    """Domains with a power-law term in the additive kind (`lagoon.automix.additive`)."""
    group_domains: tuple[int, ...] = ()
    """Domains of the capability group being fit (its held-out set's), for candidates that use only those."""
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


def log_feature_map(weights_NK: np.ndarray, options: SurrogateOptions) -> np.ndarray:
    """[N, M] the log-share features, scaled by 1 / log(1/ε) so they run from −1 (absent) to about 0 (all)."""
    if options.log_features == "none":
        return np.zeros((len(weights_NK), 0))
    scale = np.log(1.0 / options.log_offset)
    return np.log(_shares(weights_NK, options) + options.log_offset) / scale


def log_feature_jacobian(weights_K: np.ndarray, options: SurrogateOptions) -> np.ndarray:
    """[M, K] ∂u/∂w at one mixture."""
    k = len(weights_K)
    if options.log_features == "none":
        return np.zeros((0, k))
    scale = np.log(1.0 / options.log_offset)
    shares_M = _shares(weights_K[None], options)[0]
    if options.log_features == "leaf":
        return np.diag(1.0 / ((shares_M + options.log_offset) * scale))
    return _domain_onehot(k, options).T / ((shares_M + options.log_offset) * scale)[:, None]


def _domain_onehot(k: int, options: SurrogateOptions) -> np.ndarray:
    """[K, D] leaf → domain indicator for the per-domain features."""
    assert options.feature_domains is not None and len(options.feature_domains) == k, "domain features need domains"
    domains = np.asarray(options.feature_domains)
    return (domains[:, None] == np.arange(domains.max() + 1)[None, :]).astype(np.float64)


def _shares(weights_NK: np.ndarray, options: SurrogateOptions) -> np.ndarray:
    """[N, M] the shares the log features take: each leaf's, or each domain's total."""
    if options.log_features == "leaf":
        return weights_NK
    return weights_NK @ _domain_onehot(weights_NK.shape[1], options)


def feature_penalty(k: int, options: SurrogateOptions) -> np.ndarray:
    """[R, F] the penalty rows over (t, s): leaf coefficients shrink by `shrinkage_matrix`, per-leaf log
    coefficients likewise, per-domain ones toward their mean (and, weakly, toward zero: a domain no proxy
    left out would otherwise be unconstrained)."""
    leaf_RK = shrinkage_matrix(k, options.leaf_domains)
    if options.log_features == "none":
        return leaf_RK
    if options.log_features == "leaf":
        log_RM = shrinkage_matrix(k, options.leaf_domains)
    else:
        d = _domain_onehot(k, options).shape[1]
        log_RM = np.concatenate([np.eye(d) - 1.0 / d, np.sqrt(DOMAIN_PULL) * np.eye(d)])
    m = log_RM.shape[1]
    return np.block([[leaf_RK, np.zeros((len(leaf_RK), m))], [np.zeros((len(log_RM), k)), log_RM]])


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
    """``y = exp(c) + exp(θᵀx)`` with x = (w, u(w)): the weights and the optional log-share features.

    Fit, for a given λ, of ``mean_i ((ŷ_i − y_i) / sd(y))² + λ · mean_r (P θ)_r²`` (P from `feature_penalty`):

    1. Profile the floor: for each fraction q in `LOGLINEAR_FLOOR_GRID`, exp(c) = q·min(y) makes the model
       linear in log space, ``log(y − exp(c)) = θᵀx``; weighting each proxy by (y − exp(c))² turns that log
       residual into (to first order) its residual in y, so θ is a closed-form weighted ridge solution.
       Keep the q whose (c, θ) has the lowest exact objective.
    2. Refine (c, θ) jointly by trust-region nonlinear least squares (scipy ``least_squares``, analytic
       Jacobian) from there (`fit` only; the inner cross-validation that picks λ uses step 1 alone).
    """

    options: SurrogateOptions = field(default_factory=SurrogateOptions)
    floor: float = 0.0
    """c: log of the irreducible loss."""
    slopes: np.ndarray | None = None
    """[F] θ = (t over leaves, s over log features)."""
    ridge: float | None = None
    """The λ the fit used."""
    kind: SurrogateKind = "loglinear"

    def fit(self, weights_NK, targets_N):
        weights_NK = np.asarray(weights_NK, dtype=np.float64)
        targets_N = np.asarray(targets_N, dtype=np.float64)
        assert (targets_N > 0).all(), "log-linear surrogates need positive losses"
        ridge = _choose_ridge(lambda r: LogLinearSurrogate(self.options, ridge=r), self.options, weights_NK, targets_N)
        return LogLinearSurrogate(self.options, ridge=ridge).fit_fixed(weights_NK, targets_N, into=self, refine=True)

    def features(self, weights_NK: np.ndarray) -> np.ndarray:
        """[N, F] x = (w, u(w))."""
        weights_NK = np.asarray(weights_NK, dtype=np.float64)
        return np.concatenate([weights_NK, log_feature_map(weights_NK, self.options)], axis=1)

    def fit_fixed(self, weights_NK, targets_N, into: "LogLinearSurrogate | None" = None,
                  refine: bool = False) -> "LogLinearSurrogate":
        fitted = self.fit_path(weights_NK, targets_N, [self.ridge or 0.0], refine)[0]
        target = into if into is not None else self
        target.options, target.ridge, target.floor, target.slopes = fitted.options, self.ridge, fitted.floor, fitted.slopes
        return target

    def fit_path(self, weights_NK, targets_N, ridges: list[float], refine: bool = False) -> list["LogLinearSurrogate"]:
        """One fit per λ in `ridges` (this surrogate's form), the floor profile of every (λ, floor) pair
        solved in one batched call: the inner cross-validation fits dozens of forms on every fold."""
        features_NF = self.features(weights_NK)
        targets_N = np.asarray(targets_N, dtype=np.float64)
        n, k = np.shape(weights_NK)
        f = features_NF.shape[1]
        scale = max(float(targets_N.std()), 1e-3 * float(np.abs(targets_N).mean())) * np.sqrt(n)
        shape_RF = feature_penalty(k, self.options)
        ridges_L = np.asarray(ridges, dtype=np.float64)
        penalty_LFF = (ridges_L / k)[:, None, None] * (shape_RF.T @ shape_RF)[None] + 1e-12 * np.eye(f)[None]

        floors_Q = np.maximum(np.asarray(LOGLINEAR_FLOOR_GRID) * targets_N.min(), 1e-6 * targets_N.min())
        remaining_QN = targets_N[None] - floors_Q[:, None]
        weighted_QNF = features_NF[None] * (remaining_QN / scale)[:, :, None]
        gram_QFF = np.einsum("qnf,qng->qfg", weighted_QNF, weighted_QNF)
        rhs_QF = np.einsum("qnf,qn->qf", weighted_QNF, np.log(remaining_QN) * remaining_QN / scale)
        slopes_LQF = np.linalg.solve(gram_QFF[None] + penalty_LFF[:, None], np.broadcast_to(
            rhs_QF[None, :, :, None], (len(ridges_L), *rhs_QF.shape, 1)))[..., 0]
        fitted_LQN = floors_Q[None, :, None] + np.exp(np.einsum("nf,lqf->lqn", features_NF, slopes_LQF))
        penalty_LQ = np.einsum("lqf,lfg,lqg->lq", slopes_LQF, penalty_LFF, slopes_LQF)
        cost_LQ = (((fitted_LQN - targets_N) / scale) ** 2).sum(-1) + penalty_LQ
        cost_LQ = np.where(np.isfinite(cost_LQ), cost_LQ, np.inf)
        best_L = cost_LQ.argmin(1)

        fits = []
        for index, ridge in enumerate(ridges):
            theta = np.concatenate([[np.log(floors_Q[best_L[index]])], slopes_LQF[index, best_L[index]]])
            if refine:
                theta = self._refine(features_NF, targets_N, scale, shape_RF * np.sqrt(ridge / k), theta)
            fits.append(LogLinearSurrogate(self.options, floor=float(theta[0]), slopes=theta[1:].copy(), ridge=ridge))
        return fits

    @staticmethod
    def _refine(features_NF, targets_N, scale, penalty_RF, theta):
        """(c, θ) refined jointly by trust-region least squares with the analytic Jacobian."""
        n = len(targets_N)

        def residuals(theta):
            c, slopes_F = theta[0], theta[1:]
            fitted_N = np.exp(c) + np.exp(features_NF @ slopes_F)
            return np.concatenate([(fitted_N - targets_N) / scale, penalty_RF @ slopes_F])

        def jacobian(theta):
            c, slopes_F = theta[0], theta[1:]
            varying_N = np.exp(features_NF @ slopes_F)
            fit_rows = np.concatenate([np.full((n, 1), np.exp(c)), varying_N[:, None] * features_NF], axis=1) / scale
            penalty_rows = np.concatenate([np.zeros((len(penalty_RF), 1)), penalty_RF], axis=1)
            return np.concatenate([fit_rows, penalty_rows])

        return least_squares(residuals, theta, jac=jacobian, method="trf", max_nfev=200).x

    def predict(self, weights_NK):
        return np.exp(self.floor) + np.exp(self.features(weights_NK) @ self.slopes)

    def gradient(self, weights_K):
        weights_K = np.asarray(weights_K, dtype=np.float64)
        k = len(weights_K)
        varying = float(np.exp(self.features(weights_K[None])[0] @ self.slopes))
        jacobian_FK = np.concatenate([np.eye(k), log_feature_jacobian(weights_K, self.options)])
        return varying * (self.slopes @ jacobian_FK)

    def to_dict(self):
        return {"kind": self.kind, "floor": self.floor, "slopes": self.slopes.tolist(), "ridge": self.ridge,
                "log_features": self.options.log_features, "log_offset": self.options.log_offset,
                "feature_domains": list(self.options.feature_domains) if self.options.feature_domains else None}


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
    if kind == "additive":
        from lagoon.automix.additive import AdditiveSurrogate

        return AdditiveSurrogate(options)
    raise AssertionError(f"unknown surrogate kind {kind!r}")


def surrogate_from_dict(data: dict[str, Any]) -> Surrogate:
    """Rebuild a fitted surrogate written by `Surrogate.to_dict`."""
    kind = data["kind"]
    if kind == "loglinear":
        domains = data.get("feature_domains")
        options = SurrogateOptions(log_features=data.get("log_features", "none"),
                                   log_offset=float(data.get("log_offset", 0.01)),
                                   feature_domains=tuple(domains) if domains else None)
        return LogLinearSurrogate(options, floor=float(data["floor"]),
                                  slopes=np.asarray(data["slopes"], dtype=np.float64), ridge=data.get("ridge"))
    if kind == "linear":
        return LinearSurrogate(coefficients=np.asarray(data["coefficients"], dtype=np.float64), ridge=data.get("ridge"))
    if kind == "lightgbm":
        import lightgbm

        return LightGBMSurrogate(booster=lightgbm.Booster(model_str=data["model"]))
    if kind == "additive":
        from lagoon.automix.additive import AdditiveSurrogate

        return AdditiveSurrogate.from_dict(data)
    raise AssertionError(f"unknown surrogate kind {kind!r}")


def dumps(surrogates: dict[str, Surrogate]) -> str:
    return json.dumps({group: s.to_dict() for group, s in surrogates.items()}, indent=1)


def loads(text: str) -> dict[str, Surrogate]:
    return {group: surrogate_from_dict(data) for group, data in json.loads(text).items()}
