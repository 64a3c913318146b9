"""From the sweep table to a mixture: choose, cross-validate and fit the surrogates, optimize, explain.

    OUT/fit.json          per group: the surrogate form chosen, the nested cross-validation's held-out
                          Spearman / MAE with out-of-fold predictions and each fold's choice, the fitted
                          surrogates and their bootstrap members, the objective weights
    OUT/mixture.toml      the optimized mixture (`lagoon.data.Mixture` format; ``[data] mixture = ...``)
    OUT/optimized.json    its weights, predicted per-group bits per byte (with the bootstrap spread of the
                          change from the natural mix) next to the natural and uniform mixes', the KL to
                          the prior, the interaction matrix, and the sweep's signal-to-noise per group
    OUT/interactions.csv  group × leaf: Δ predicted bits per byte when 10% of the prior moves to the leaf

Per group, the form (log features, shrinkage target, λ) is chosen by an inner cross-validation on all
proxies (`lagoon.automix.selection`); the score reported for it comes from the nested cross-validation,
which repeats that choice inside every outer fold (`lagoon.automix.crossval`). The noise runs
(`lagoon.automix.noise`) are not fit on: they measure the noise.

This stage takes seconds, so it is recomputed whenever its settings (surrogate, optimizer, objective) or
the sweep change, and skipped otherwise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lagoon.automix.crossval import nested_cross_validate
from lagoon.automix.noise import read_noise, signal_to_noise
from lagoon.automix.optimize import INTERACTION_STEP, Objective, interaction_matrix, optimize_mixture
from lagoon.automix.selection import bootstrap_ensemble, candidate_grid, candidate_to_dict, select
from lagoon.automix.space import MixtureSpace, kl_divergence
from lagoon.automix.surrogate import SurrogateOptions, dumps
from lagoon.automix.sweep import Plan, read_table, write_json
from lagoon.errors import ConfigError, LagoonError

FIT_FILE = "fit.json"
OPTIMIZED_FILE = "optimized.json"
MIXTURE_FILE = "mixture.toml"
INTERACTIONS_FILE = "interactions.csv"


def objective_weights(automix: Any, groups: list[str]) -> dict[str, float]:
    """λ_g for every group measured by the sweep (config weights, or 1 for every group)."""
    if not automix.objective:
        return {group: 1.0 for group in groups}
    for group in automix.objective:
        if group not in groups:
            raise ConfigError(f"automix.objective.{group}",
                              f"no capability group {group!r} in the shard set (it has {', '.join(groups)})")
    return {group: float(automix.objective[group]) for group in groups if automix.objective.get(group, 0) > 0}


def surrogate_options(automix: Any) -> SurrogateOptions:
    s = automix.surrogate
    return SurrogateOptions(ridge=tuple(s.ridge), lightgbm_estimators=s.lightgbm_estimators,
                            lightgbm_learning_rate=s.lightgbm_learning_rate, lightgbm_num_leaves=s.lightgbm_num_leaves,
                            lightgbm_min_child_samples=s.lightgbm_min_child_samples, seed=automix.seed)


def leaf_domain_indices(plan: Plan) -> tuple[int, ...]:
    domains = sorted(set(plan.domains))
    return tuple(domains.index(d) for d in plan.domains)


def group_options(automix: Any, plan: Plan, group: str) -> SurrogateOptions:
    """The options of `group`'s surrogates: the shared ones plus the domains of the group's leaves (its
    held-out set is drawn from the same domains), for the additive kind's power laws."""
    from dataclasses import replace

    indices = leaf_domain_indices(plan)
    own = sorted({indices[k] for k, leaf in enumerate(plan.space.leaves) if leaf in set(plan.groups.get(group, []))})
    return replace(surrogate_options(automix), group_domains=tuple(own))


def surrogate_candidates(settings: Any) -> list[Any]:
    """The candidate forms of `[automix.surrogate]` (kind auto: the log-linear and the additive ones)."""
    kinds = ["loglinear", "additive"] if settings.kind == "auto" else [settings.kind]
    return [candidate for kind in kinds for candidate in candidate_grid(
        kind, list(settings.ridge), list(settings.shrink), list(settings.log_features), list(settings.log_offsets),
        have_domains=True, power_domains=list(settings.power_domains))]


def _fingerprint(automix: Any, weights_NK: np.ndarray, bpb: dict[str, np.ndarray], noise: Any) -> str:
    settings = {"surrogate": asdict(automix.surrogate), "optimizer": asdict(automix.optimizer),
                "objective": automix.objective, "seed": automix.seed, "concentration": automix.concentration,
                "prior_temperature": automix.prior_temperature, "noise": noise}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(weights_NK).tobytes())
    for group in sorted(bpb):
        digest.update(group.encode() + np.ascontiguousarray(bpb[group]).tobytes())
    return digest.hexdigest()[:16]


def fit_and_optimize(out_dir: Path, plan: Plan, automix: Any) -> dict[str, Any]:
    """Run this stage (or return its stored result when nothing it depends on changed)."""
    weights_NK, bpb, proxies = read_table(out_dir, plan)
    space = plan.space
    groups = sorted(g for g in bpb if np.isfinite(bpb[g]).all())
    if len(proxies) < max(automix.surrogate.folds, 3):
        raise LagoonError(f"only {len(proxies)} proxies finished; {automix.surrogate.folds}-fold cross-validation "
                          "needs at least as many")
    lambdas = objective_weights(automix, groups)
    noise = read_noise(out_dir)
    fingerprint = _fingerprint(automix, weights_NK, bpb, noise)
    stored = out_dir / OPTIMIZED_FILE
    if stored.is_file() and (out_dir / MIXTURE_FILE).is_file():
        previous = json.loads(stored.read_text())
        if previous.get("fingerprint") == fingerprint:
            return previous

    settings = automix.surrogate
    domains = leaf_domain_indices(plan)
    options = {group: group_options(automix, plan, group) for group in lambdas}
    candidates = surrogate_candidates(settings)
    targets = {group: bpb[group] for group in lambdas}
    scores = nested_cross_validate(candidates, weights_NK, targets, settings.folds, settings.inner_folds,
                                   automix.seed, options, domains)
    chosen = {group: select(candidates, options[group], domains, weights_NK, targets[group], settings.inner_folds,
                            automix.seed).chosen for group in lambdas}
    surrogates = {group: chosen[group].fit(options[group], domains, weights_NK, targets[group]) for group in lambdas}
    ensemble = bootstrap_ensemble(chosen, options, domains, weights_NK, targets, settings.bootstrap, automix.seed)

    # β in the objective's own units: kl_strength standard deviations of the sweep's objective per nat.
    measured_objective_N = sum(weight * targets[group] for group, weight in lambdas.items())
    beta = automix.optimizer.kl_strength * float(np.std(measured_objective_N))
    sweep_kl_N = kl_divergence(weights_NK, space.prior)
    quantile = automix.optimizer.kl_quantile
    max_kl = float(np.quantile(sweep_kl_N, quantile)) if quantile is not None else None
    references = [{"natural": space.prior, "uniform": space.uniform}[name] for name in automix.optimizer.references]
    objective = Objective(surrogates, lambdas, space.prior, beta, ensemble, automix.optimizer.uncertainty_weight,
                          references)
    method = automix.optimizer.method
    if method == "auto":
        method = "slsqp" if objective.differentiable else "topk"
    rng = np.random.default_rng(automix.seed)
    concentration = (automix.concentration[0], automix.concentration[1])
    optimized = optimize_mixture(objective, space, method, rng, automix.optimizer.candidates, automix.optimizer.top_k,
                                 concentration, automix.prior_temperature, max_kl)
    matrix_GK = interaction_matrix(surrogates, space.prior)

    compared = {"optimized": optimized.weights, "natural": space.prior, "uniform": space.uniform}
    predicted = {name: {g: float(v[0]) for g, v in objective.predict(w).items()} for name, w in compared.items()}
    spread = {name: float(objective.spread(w)[0]) for name, w in compared.items()}
    spread_vs_uniform = float(objective.spread(optimized.weights, space.uniform)[0])
    noise_figures = None
    if noise is not None:
        noise_figures = {group: signal_to_noise(targets[group], noise["noise_sd"][group]) for group in lambdas
                         if group in noise["noise_sd"]}
    summary = {
        "fingerprint": fingerprint,
        "surrogate": settings.kind, "method": method, "kl_strength": automix.optimizer.kl_strength, "kl_beta": beta,
        "max_kl": max_kl, "uncertainty_weight": automix.optimizer.uncertainty_weight, "bootstrap": len(ensemble),
        "chosen": {group: candidate_to_dict(c) for group, c in chosen.items()},
        "candidates": len(candidates), "objective_weights": lambdas, "proxies": len(proxies),
        "cv": {group: {"spearman": s.spearman, "mae": s.mae, "fold_spearman": s.fold_spearman,
                       "fold_choices": s.fold_choices} for group, s in scores.items()},
        "noise": noise_figures, "noise_runs": noise,
        "weights": space.as_dict(optimized.weights),
        "mixes": {name: space.as_dict(w) for name, w in compared.items()},
        "predicted": predicted,
        "predicted_objective": {name: float(objective.loss(w)[0]) for name, w in compared.items()},
        "predicted_spread": spread, "predicted_spread_vs_uniform": spread_vs_uniform,
        "references": list(automix.optimizer.references),
        "kl_to_prior": optimized.kl, "epochs": space.as_dict(space.epochs(optimized.weights)),
        "interactions": {"groups": list(surrogates), "leaves": list(space.leaves), "matrix": matrix_GK.tolist(),
                         "step": INTERACTION_STEP},
    }
    write_json(out_dir / FIT_FILE, {
        "surrogate": settings.kind, "folds": settings.folds, "inner_folds": settings.inner_folds, "proxies": proxies,
        "chosen": summary["chosen"], "cv": {group: s.to_dict() for group, s in scores.items()},
        "surrogates": json.loads(dumps(surrogates)), "objective_weights": lambdas,
        "ensemble": [json.loads(dumps(member)) for member in ensemble]})
    write_mixture(out_dir / MIXTURE_FILE, space, optimized.weights)
    _write_interactions(out_dir / INTERACTIONS_FILE, list(surrogates), space, matrix_GK)
    write_json(stored, summary)
    return summary


def write_mixture(path: Path, space: MixtureSpace, weights_K: np.ndarray) -> None:
    """Save a mixture in the format `lagoon.data.Mixture.load` and ``lagoon train`` read."""
    from lagoon.data import Mixture

    Mixture({leaf: float(w) for leaf, w in zip(space.leaves, weights_K)}).save(path)


def _write_interactions(path: Path, groups: list[str], space: MixtureSpace, matrix_GK: np.ndarray) -> None:
    lines = ["group," + ",".join(space.leaves)]
    lines += [group + "," + ",".join(f"{v:.6f}" for v in row) for group, row in zip(groups, matrix_GK)]
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text("\n".join(lines) + "\n")
    staging.replace(path)
