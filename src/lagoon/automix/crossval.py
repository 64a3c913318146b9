"""Cross-validation of the surrogates: every figure comes from mixtures the fit did not see.

For each capability group the proxies are split into K folds (shuffled once, the same folds for every
group); a surrogate is fit on K − 1 folds and predicts the held-out one. The out-of-fold predictions of all
proxies are then compared with the measured losses: Spearman's rank correlation (what matters for choosing
a mixture: RegMix, Liu et al. 2024, §4.1, reports ρ on held-out mixtures) and the mean absolute error in
the loss's own units. The per-fold Spearman spread is kept as well, to show how stable ρ is.

`nested_cross_validate` scores the whole procedure that picks a group's surrogate form: inside each outer
fold, `lagoon.automix.selection.select` chooses among the candidates by an inner K-fold on the outer
fold's training proxies only, the choice is refit there and predicts the held-out fold. The score is thus
that of "select, then fit", the procedure the pipeline runs on all proxies (Varma & Simon 2006; Cawley &
Talbot 2010, "On over-fitting in model selection", §5). Which form each outer fold chose is reported too.

Shape legend: N mixtures (proxies), K leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from lagoon.automix.selection import Candidate, for_group, select
from lagoon.automix.surrogate import SurrogateKind, SurrogateOptions, make_surrogate


@dataclass
class GroupScore:
    """Held-out quality of one group's surrogate."""

    spearman: float
    """Spearman ρ between measured and out-of-fold predicted losses, over all proxies."""
    mae: float
    """Mean absolute error of the out-of-fold predictions."""
    fold_spearman: list[float]
    """ρ within each held-out fold (noisy for small folds; shown for spread)."""
    predicted: list[float]
    """Out-of-fold prediction for each proxy, in the order of the input."""
    measured: list[float]
    fold_choices: list[str] | None = None
    """Nested: the candidate each outer fold's inner cross-validation chose."""

    def to_dict(self) -> dict:
        return {"spearman": self.spearman, "mae": self.mae, "fold_spearman": self.fold_spearman,
                "predicted": self.predicted, "measured": self.measured, "fold_choices": self.fold_choices}


def fold_indices(count: int, folds: int, seed: int) -> list[np.ndarray]:
    """`folds` disjoint index sets covering range(count), after one seeded shuffle."""
    assert 2 <= folds <= count, (folds, count)
    order = np.random.default_rng(seed).permutation(count)
    return [np.sort(part) for part in np.array_split(order, folds)]


def cross_validate(kind: SurrogateKind, weights_NK: np.ndarray, targets: dict[str, np.ndarray], folds: int,
                   seed: int = 0, options: SurrogateOptions | None = None) -> dict[str, GroupScore]:
    """Out-of-fold Spearman and MAE of a `kind` surrogate for each group in `targets` (group → [N] losses)."""
    weights_NK = np.asarray(weights_NK, dtype=np.float64)
    parts = fold_indices(len(weights_NK), folds, seed)
    scores = {}
    for group, targets_N in targets.items():
        targets_N = np.asarray(targets_N, dtype=np.float64)
        predicted_N = np.zeros_like(targets_N)
        for held_out in parts:
            train = np.setdiff1d(np.arange(len(targets_N)), held_out)
            model = make_surrogate(kind, options).fit(weights_NK[train], targets_N[train])
            predicted_N[held_out] = model.predict(weights_NK[held_out])
        per_fold = [_spearman(targets_N[p], predicted_N[p]) for p in parts if len(p) >= 3]
        scores[group] = GroupScore(
            spearman=_spearman(targets_N, predicted_N), mae=float(np.abs(predicted_N - targets_N).mean()),
            fold_spearman=per_fold, predicted=predicted_N.tolist(), measured=targets_N.tolist())
    return scores


def nested_cross_validate(candidates: list[Candidate], weights_NK: np.ndarray, targets: dict[str, np.ndarray],
                          folds: int, inner_folds: int, seed: int = 0,
                          options: SurrogateOptions | dict[str, SurrogateOptions] | None = None,
                          leaf_domains: tuple[int, ...] | None = None) -> dict[str, GroupScore]:
    """Out-of-fold Spearman and MAE of "choose the candidate by inner cross-validation, then fit it", per group
    (`options`: shared, or each group's)."""
    weights_NK = np.asarray(weights_NK, dtype=np.float64)
    parts = fold_indices(len(weights_NK), folds, seed)
    scores = {}
    for group, targets_N in targets.items():
        group_options = for_group(options or SurrogateOptions(), group)
        targets_N = np.asarray(targets_N, dtype=np.float64)
        predicted_N = np.zeros_like(targets_N)
        choices = []
        for index, held_out in enumerate(parts):
            train = np.setdiff1d(np.arange(len(targets_N)), held_out)
            selection = select(candidates, group_options, leaf_domains, weights_NK[train], targets_N[train],
                               inner_folds, seed + 1 + index)
            model = selection.chosen.fit(group_options, leaf_domains, weights_NK[train], targets_N[train])
            predicted_N[held_out] = model.predict(weights_NK[held_out])
            choices.append(selection.chosen.label)
        per_fold = [_spearman(targets_N[p], predicted_N[p]) for p in parts if len(p) >= 3]
        scores[group] = GroupScore(
            spearman=_spearman(targets_N, predicted_N), mae=float(np.abs(predicted_N - targets_N).mean()),
            fold_spearman=per_fold, predicted=predicted_N.tolist(), measured=targets_N.tolist(), fold_choices=choices)
    return scores


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)
