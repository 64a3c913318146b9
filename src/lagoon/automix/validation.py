"""`lagoon automix validate`: is the optimized mix really better? Train it at a larger scale and compare.

The optimized, natural and uniform mixes are each trained with a model `validation.scale` × the proxy's
parameters for `validation.token_scale` × the proxy's tokens, once per seed, with repetition matched to
the target run exactly as the proxies' was. Reported per mix: each group's held-out bits per byte and
the objective (their λ-weighted sum), as mean ± standard deviation over seeds, and whether the optimized
mix beats each baseline in every seed (paired by seed: same initialisation and data order).

Predicted vs actual: the surrogates predict proxy-scale losses, so each mix is also trained once at proxy
scale (`validation.proxy_scale_check`), where prediction and measurement are comparable; at the larger
scale the report compares the predicted and measured ranking of the mixes.

    OUT/validation/MIX-DIGEST/seedS/        the larger runs (DIGEST identifies the mixture)
    OUT/validation/proxy_scale/MIX-DIGEST/  the proxy-scale checks
    OUT/validation.json                 the summary below
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from lagoon.automix.fit import OPTIMIZED_FILE
from lagoon.automix.runs import RunSpec
from lagoon.automix.sweep import EVENTS_FILE, Plan, run_specs, write_json
from lagoon.errors import LagoonError

VALIDATION_FILE = "validation.json"
MIXES = ("optimized", "natural", "uniform")


def validation_specs(out_dir: Path, plan: Plan, mixes: dict[str, dict[str, float]], prepared: Any, seeds: list[int],
                     proxy_scale_check: bool) -> list[RunSpec]:
    specs = []
    for mix, weights in mixes.items():
        # Directories carry the mixture's digest: a refit that changes the optimized mix trains it afresh
        # instead of resuming (or reading back) runs of the old one.
        name = f"{mix}-{mixture_digest(weights)}"
        for seed in seeds:
            config = _with_mixture(prepared.large_config, weights)
            config["train"]["seed"] = seed
            config["data"]["seed"] = seed
            specs.append(RunSpec(f"validation {mix} seed {seed}", str(out_dir / "validation" / name / f"seed{seed}"),
                                 config, prepared.large_tokens / plan.space.target_tokens, prepared.large_params))
        if proxy_scale_check:
            specs.append(RunSpec(f"proxy-scale {mix}", str(out_dir / "validation" / "proxy_scale" / name),
                                 _with_mixture(prepared.proxy_config, weights), plan.leaf_fraction,
                                 prepared.proxy_params))
    return specs


def mixture_digest(weights: dict[str, float]) -> str:
    """Eight hex digits identifying a mixture (weights rounded to 1e-9)."""
    canonical = json.dumps({leaf: round(float(w), 9) for leaf, w in sorted(weights.items()) if w > 0})
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def _with_mixture(config: dict[str, Any], weights: dict[str, float]) -> dict[str, Any]:
    config = json.loads(json.dumps(config))
    config["data"]["weights"] = {leaf: float(w) for leaf, w in weights.items() if w > 0}
    config["data"]["mixture"] = ""
    return config


def run_validation(out_dir: Path, plan: Plan, automix: Any, prepared: Any, show_progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the validation runs and write OUT/validation.json."""
    optimized_path = out_dir / OPTIMIZED_FILE
    if not optimized_path.is_file():
        raise LagoonError(f"{out_dir} has no optimized mixture yet; run `lagoon automix run` first")
    optimized = json.loads(optimized_path.read_text())
    mixes = {name: optimized["mixes"][name] for name in MIXES}
    seeds = list(automix.validation.seeds)
    specs = validation_specs(out_dir, plan, mixes, prepared, seeds, automix.validation.proxy_scale_check)
    results = run_specs(specs, automix, "validation", out_dir / EVENTS_FILE, show_progress)
    summary = summarize(optimized, {spec.name: results[spec.run_dir] for spec in specs}, seeds)
    sweep_flops = _sweep_flops(out_dir, plan)
    large_flops = summary["runs"]["validation optimized seed %d" % seeds[0]]["flops"]
    summary["compute"] = {
        "model_ratio": prepared.large_params["params_total"] / prepared.proxy_params["params_total"],
        "proxy_params": prepared.proxy_params, "validation_params": prepared.large_params,
        "token_ratio": prepared.large_tokens / plan.proxy_tokens, "proxy_tokens": plan.proxy_tokens,
        "validation_tokens": prepared.large_tokens, "target_tokens": plan.space.target_tokens,
        "sweep_flops": sweep_flops, "validation_run_flops": large_flops,
        "sweep_share_of_validation_run": sweep_flops / large_flops,
        "sweep_wall_s": _sweep_wall(out_dir, plan),
        "validation_run_wall_s": float(np.mean([summary["runs"][f"validation optimized seed {s}"]["wall_s"]
                                                for s in seeds])),
    }
    write_json(out_dir / VALIDATION_FILE, summary)
    return summary


def summarize(optimized: dict[str, Any], results: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per mix and group: mean, std and per-seed values; objective wins per seed; predicted vs actual."""
    lambdas = optimized["objective_weights"]

    def objective(bpb: dict[str, float]) -> float:
        return float(sum(weight * bpb[group] for group, weight in lambdas.items()))

    per_mix: dict[str, Any] = {}
    for mix in MIXES:
        runs = [results[f"validation {mix} seed {seed}"] for seed in seeds]
        groups = {group: _spread([run["bpb"][group] for run in runs]) for group in lambdas}
        per_mix[mix] = {"groups": groups, "objective": _spread([objective(run["bpb"]) for run in runs])}
    wins = {baseline: [per_mix["optimized"]["objective"]["values"][i] < per_mix[baseline]["objective"]["values"][i]
                       for i in range(len(seeds))] for baseline in ("natural", "uniform")}
    # Per group and baseline, paired by seed: optimized − baseline (negative: the optimized mix is better there).
    changes = {baseline: {key: _spread([a - b for a, b in zip(_values(per_mix["optimized"], key),
                                                                _values(per_mix[baseline], key))])
                          for key in ["objective", *lambdas]} for baseline in ("natural", "uniform")}
    proxy_scale = {}
    for mix in MIXES:
        measured = results.get(f"proxy-scale {mix}")
        if measured is not None:
            proxy_scale[mix] = {"predicted": optimized["predicted"][mix], "measured": measured["bpb"],
                                "predicted_objective": optimized["predicted_objective"][mix],
                                "measured_objective": objective(measured["bpb"])}
    predicted_order = sorted(MIXES, key=lambda m: optimized["predicted_objective"][m])
    measured_order = sorted(MIXES, key=lambda m: per_mix[m]["objective"]["mean"])
    return {
        "seeds": seeds, "objective_weights": lambdas, "mixes": per_mix, "wins": wins, "changes": changes,
        "optimized_beats_both_in_every_seed": all(all(v) for v in wins.values()),
        "proxy_scale": proxy_scale,
        "ranking": {"predicted": predicted_order, "measured_at_scale": measured_order},
        "runs": results,
    }


def _values(entry: dict[str, Any], key: str) -> list[float]:
    return entry["objective"]["values"] if key == "objective" else entry["groups"][key]["values"]


def verdict(change: dict[str, Any]) -> str:
    """"better in every seed", "worse in every seed" or "better in k of n seeds" for paired changes."""
    values = change["values"]
    better = sum(v < 0 for v in values)
    if better == len(values):
        return "better in every seed"
    if better == 0:
        return "worse in every seed"
    return f"better in {better} of {len(values)} seeds"


def _spread(values: list[float]) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "values": array.tolist()}


def _sweep_results(out_dir: Path, plan: Plan) -> list[dict[str, Any]]:
    """Every finished run of the sweep: the proxies and the noise runs (they are part of its compute)."""
    from lagoon.automix.backends import read_result
    from lagoon.automix.sweep import proxy_dir

    runs = [proxy_dir(out_dir, i) for i in range(len(plan.mixtures))] + sorted((out_dir / "noise").glob("seed*"))
    return [r for r in map(read_result, runs) if r is not None]


def _sweep_flops(out_dir: Path, plan: Plan) -> float:
    return float(sum(r["flops"] for r in _sweep_results(out_dir, plan)))


def _sweep_wall(out_dir: Path, plan: Plan) -> float:
    return float(sum(r["wall_s"] for r in _sweep_results(out_dir, plan)))
