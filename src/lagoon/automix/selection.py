"""Choosing each group's surrogate form by cross-validation, and the bootstrap ensemble that says how sure it is.

A *candidate* is one surrogate form with every hyper-parameter fixed: the kind, the ridge strength λ, the
shrinkage target (each leaf's coefficient toward its domain's mean, or toward the mean of all leaves, which
lets quality buckets of one domain differ) and the log-share features (none, per leaf, per domain; see
`lagoon.automix.surrogate`). `select` scores every candidate by K-fold cross-validation on the mixtures it
is given and keeps the one with the lowest held-out squared error, so a group whose data supports
leaf-level effects gets them and one whose data does not keeps the smoother form. Called inside each fold
of `lagoon.automix.crossval.nested_cross_validate`, the choice never sees the fold it is scored on (Varma &
Simon 2006, "Bias in error estimation when using cross-validation for model selection": selecting and
scoring on the same folds overstates the score).

Uncertainty: `bootstrap_ensemble` refits the chosen candidate of every group on B resamples of the proxies
(Efron & Tibshirani 1993, ch. 6), the same resample for every group so the objective's spread keeps the
groups' correlation. The spread of the members' predictions at a mixture is what the optimizer is unsure of
there: it grows where the proxies say little (far from where they were sampled, along directions they do
not separate) and stays small near the natural mix, where the sweep is anchored.

Shape legend: N mixtures, K leaves, B bootstrap members.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from lagoon.automix.surrogate import LogFeatures, Surrogate, SurrogateKind, SurrogateOptions, make_surrogate

Shrink = Literal["domain", "leaf"]
PowerDomains = Literal["own", "all"]


@dataclass(frozen=True)
class Candidate:
    """One surrogate form with fixed hyper-parameters."""

    kind: SurrogateKind
    ridge: float = 0.0
    shrink: Shrink = "domain"
    log_features: LogFeatures = "none"
    log_offset: float = 0.01
    """ε of the log features (loglinear) or of the power laws (additive)."""
    power_domains: PowerDomains = "own"
    """additive: a power law for each domain of the group's held-out set, or for every domain."""

    @property
    def label(self) -> str:
        if self.kind == "lightgbm":
            return "lightgbm"
        parts = [self.kind, f"shrink={self.shrink}", f"λ={self.ridge:g}"]
        if self.log_features != "none":
            parts.append(f"log={self.log_features}(ε={self.log_offset:g})")
        if self.kind == "additive":
            parts.append(f"power={self.power_domains}(ε={self.log_offset:g})")
        return " ".join(parts)

    def build(self, base: SurrogateOptions, leaf_domains: tuple[int, ...] | None) -> Surrogate:
        """An unfitted surrogate of this form (`fit_fixed` fits it without choosing anything)."""
        every = tuple(sorted(set(leaf_domains))) if leaf_domains else ()
        power = (base.group_domains or every) if self.power_domains == "own" else every
        options = replace(base, leaf_domains=leaf_domains if self.shrink == "domain" else None,
                          feature_domains=leaf_domains, log_features=self.log_features, log_offset=self.log_offset,
                          power_domains=power)
        surrogate = make_surrogate(self.kind, options)
        if self.kind != "lightgbm":
            surrogate.ridge = self.ridge
        return surrogate

    def fit(self, base: SurrogateOptions, leaf_domains: tuple[int, ...] | None, weights_NK: np.ndarray,
            targets_N: np.ndarray, refine: bool = True) -> Surrogate:
        surrogate = self.build(base, leaf_domains)
        if self.kind == "lightgbm":
            return surrogate.fit(weights_NK, targets_N)
        if self.kind in ("loglinear", "additive"):
            return surrogate.fit_fixed(weights_NK, targets_N, refine=refine)
        return surrogate.fit_fixed(weights_NK, targets_N)


def candidate_grid(kind: SurrogateKind, ridges: list[float], shrinks: list[Shrink], log_features: list[LogFeatures],
                   log_offsets: list[float], have_domains: bool,
                   power_domains: list[PowerDomains] | None = None) -> list[Candidate]:
    """Every combination the config allows for `kind`, simplest first (ties go to the earlier one)."""
    if kind == "lightgbm":
        return [Candidate("lightgbm")]
    if kind == "additive":
        assert have_domains, "the additive kind needs every leaf's domain"
        return [Candidate("additive", ridge, shrink, "none", offset, power)
                for power, offset, shrink, ridge in itertools.product(power_domains or ["own"], log_offsets, shrinks,
                                                                      sorted(ridges, reverse=True))]
    shrinks = [s for s in shrinks if s == "leaf" or have_domains] or ["leaf"]
    features: list[tuple[LogFeatures, float]] = []
    for name in log_features if kind == "loglinear" else ["none"]:
        if name == "none":
            features.append(("none", 0.01))
        elif name == "leaf" or have_domains:
            features.extend((name, offset) for offset in log_offsets)
    return [Candidate(kind, ridge, shrink, name, offset)
            for (name, offset), shrink, ridge in itertools.product(features, shrinks, sorted(ridges, reverse=True))]


@dataclass
class Selection:
    """The candidate `select` kept, and every candidate's held-out error."""

    chosen: Candidate
    errors: dict[str, float]
    """Candidate label → mean squared held-out error (in the target's units squared)."""


def select(candidates: list[Candidate], base: SurrogateOptions, leaf_domains: tuple[int, ...] | None,
           weights_NK: np.ndarray, targets_N: np.ndarray, folds: int, seed: int) -> Selection:
    """The candidate with the lowest K-fold held-out squared error on these mixtures (fits without refinement,
    every λ of one form fit at once by `fit_ridges`, so a grid of dozens stays fast)."""
    n = len(targets_N)
    folds = min(folds, n)
    if len(candidates) == 1 or folds < 2 or n < 4:
        return Selection(candidates[len(candidates) // 2] if n < 4 else candidates[0], {})
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, folds)
    squared = {candidate: 0.0 for candidate in candidates}
    forms: dict[Candidate, list[Candidate]] = {}
    for candidate in candidates:  # candidates that differ only in λ share one fit per fold
        forms.setdefault(replace(candidate, ridge=0.0), []).append(candidate)
    for held_out in parts:
        train = np.setdiff1d(order, held_out)
        for members in forms.values():
            models = fit_ridges(members, base, leaf_domains, weights_NK[train], targets_N[train])
            for candidate, model in zip(members, models):
                squared[candidate] += float(((model.predict(weights_NK[held_out]) - targets_N[held_out]) ** 2).sum())
    errors = {c.label: value / n if np.isfinite(value) else np.inf for c, value in squared.items()}
    best = min(errors.values())
    chosen = next(c for c in candidates if errors[c.label] <= best * (1 + 1e-9))
    return Selection(chosen, errors)


def fit_ridges(candidates: list[Candidate], base: SurrogateOptions, leaf_domains: tuple[int, ...] | None,
               weights_NK: np.ndarray, targets_N: np.ndarray) -> list[Surrogate]:
    """Unrefined fits of candidates that differ only in λ (the log-linear and additive kinds batch them)."""
    if candidates[0].kind in ("loglinear", "additive"):
        return candidates[0].build(base, leaf_domains).fit_path(weights_NK, targets_N, [c.ridge for c in candidates])
    return [c.fit(base, leaf_domains, weights_NK, targets_N, refine=False) for c in candidates]


def bootstrap_ensemble(chosen: dict[str, Candidate], base: SurrogateOptions | dict[str, SurrogateOptions],
                       leaf_domains: tuple[int, ...] | None, weights_NK: np.ndarray, targets: dict[str, np.ndarray],
                       members: int, seed: int) -> list[dict[str, Surrogate]]:
    """B refits of every group's chosen form on bootstrap resamples of the proxies (one resample per member,
    shared by the groups). `base`: the options, or each group's."""
    rng = np.random.default_rng([seed, 0xB007])
    n = len(weights_NK)
    ensemble = []
    for _ in range(members):
        rows = rng.integers(0, n, size=n)
        ensemble.append({group: candidate.fit(for_group(base, group), leaf_domains, weights_NK[rows],
                                              targets[group][rows], refine=False)
                         for group, candidate in chosen.items()})
    return ensemble


def for_group(options: SurrogateOptions | dict[str, SurrogateOptions], group: str) -> SurrogateOptions:
    return options[group] if isinstance(options, dict) else options


def candidate_to_dict(candidate: Candidate) -> dict[str, Any]:
    return {"kind": candidate.kind, "ridge": candidate.ridge, "shrink": candidate.shrink,
            "log_features": candidate.log_features, "log_offset": candidate.log_offset,
            "power_domains": candidate.power_domains, "label": candidate.label}
