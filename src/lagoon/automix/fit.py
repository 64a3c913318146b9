"""From the sweep table to a mixture: cross-validate and fit the surrogates, optimize, explain.

    OUT/fit.json          surrogate kind, per-group held-out Spearman / MAE with out-of-fold predictions,
                          the fitted surrogates, the objective weights
    OUT/mixture.toml      the optimized mixture (`lagoon.data.Mixture` format; ``[data] mixture = ...``)
    OUT/optimized.json    its weights, predicted per-group bits per byte next to the natural and uniform
                          mixes', the KL to the prior, and the interaction matrix
    OUT/interactions.csv  group × leaf: Δ predicted bits per byte when 10% of the prior moves to the leaf

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

from lagoon.automix.crossval import cross_validate
from lagoon.automix.optimize import INTERACTION_STEP, Objective, interaction_matrix, optimize_mixture
from lagoon.automix.space import MixtureSpace, kl_divergence
from lagoon.automix.surrogate import SurrogateOptions, dumps, make_surrogate
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


def surrogate_options(automix: Any, plan: Plan) -> SurrogateOptions:
    s = automix.surrogate
    domains = sorted(set(plan.domains))
    leaf_domains = tuple(domains.index(d) for d in plan.domains) if s.shrink_to_domain else None
    return SurrogateOptions(ridge=tuple(s.ridge), leaf_domains=leaf_domains, lightgbm_estimators=s.lightgbm_estimators,
                            lightgbm_learning_rate=s.lightgbm_learning_rate, lightgbm_num_leaves=s.lightgbm_num_leaves,
                            lightgbm_min_child_samples=s.lightgbm_min_child_samples, seed=automix.seed)


def _fingerprint(automix: Any, weights_NK: np.ndarray, bpb: dict[str, np.ndarray]) -> str:
    settings = {"surrogate": asdict(automix.surrogate), "optimizer": asdict(automix.optimizer),
                "objective": automix.objective, "seed": automix.seed, "concentration": automix.concentration,
                "prior_temperature": automix.prior_temperature}
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
    fingerprint = _fingerprint(automix, weights_NK, bpb)
    stored = out_dir / OPTIMIZED_FILE
    if stored.is_file() and (out_dir / MIXTURE_FILE).is_file():
        previous = json.loads(stored.read_text())
        if previous.get("fingerprint") == fingerprint:
            return previous

    kind = automix.surrogate.kind
    options = surrogate_options(automix, plan)
    targets = {group: bpb[group] for group in lambdas}
    scores = cross_validate(kind, weights_NK, targets, automix.surrogate.folds, automix.seed, options)
    surrogates = {group: make_surrogate(kind, options).fit(weights_NK, targets[group]) for group in lambdas}

    # β in the objective's own units: kl_strength standard deviations of the sweep's objective per nat.
    measured_objective_N = sum(weight * targets[group] for group, weight in lambdas.items())
    beta = automix.optimizer.kl_strength * float(np.std(measured_objective_N))
    sweep_kl_N = kl_divergence(weights_NK, space.prior)
    quantile = automix.optimizer.kl_quantile
    max_kl = float(np.quantile(sweep_kl_N, quantile)) if quantile is not None else None
    objective = Objective(surrogates, lambdas, space.prior, beta)
    method = automix.optimizer.method
    if method == "auto":
        method = "slsqp" if objective.differentiable else "topk"
    rng = np.random.default_rng(automix.seed)
    concentration = (automix.concentration[0], automix.concentration[1])
    chosen = optimize_mixture(objective, space, method, rng, automix.optimizer.candidates, automix.optimizer.top_k,
                              concentration, automix.prior_temperature, max_kl)
    matrix_GK = interaction_matrix(surrogates, space.prior)

    compared = {"optimized": chosen.weights, "natural": space.prior, "uniform": space.uniform}
    predicted = {name: {g: float(v[0]) for g, v in objective.predict(w).items()} for name, w in compared.items()}
    summary = {
        "fingerprint": fingerprint,
        "surrogate": kind, "method": method, "kl_strength": automix.optimizer.kl_strength, "kl_beta": beta,
        "max_kl": max_kl, "ridge": {group: getattr(s, "ridge", None) for group, s in surrogates.items()},
        "objective_weights": lambdas, "proxies": len(proxies),
        "cv": {group: {"spearman": s.spearman, "mae": s.mae, "fold_spearman": s.fold_spearman}
               for group, s in scores.items()},
        "weights": space.as_dict(chosen.weights),
        "mixes": {name: space.as_dict(w) for name, w in compared.items()},
        "predicted": predicted,
        "predicted_objective": {name: float(objective.loss(w)[0]) for name, w in compared.items()},
        "kl_to_prior": chosen.kl, "epochs": space.as_dict(space.epochs(chosen.weights)),
        "interactions": {"groups": list(surrogates), "leaves": list(space.leaves), "matrix": matrix_GK.tolist(),
                         "step": INTERACTION_STEP},
    }
    write_json(out_dir / FIT_FILE, {
        "surrogate": kind, "folds": automix.surrogate.folds, "proxies": proxies,
        "cv": {group: s.to_dict() for group, s in scores.items()},
        "surrogates": json.loads(dumps(surrogates)), "objective_weights": lambdas})
    write_mixture(out_dir / MIXTURE_FILE, space, chosen.weights)
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
