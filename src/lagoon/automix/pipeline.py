"""The whole AutoMixer loop as one call: `run(config, out_dir)` and `validate(config, out_dir)`.

    from lagoon.config import load_config
    from lagoon import automix
    summary = automix.run(load_config("configs/automix_demo.toml"), "runs/automix")   # resumable; no-op when done
    automix.validate(load_config("configs/automix_demo.toml"), "runs/automix")         # larger-scale check

`run`: plan the sweep (leaves, prior, caps, sampled mixtures) → train the proxies that have no result yet →
write the Parquet table → cross-validate and fit the surrogates → optimize → write the mixture, the
interaction matrix and the HTML report. Every stage keeps its output in OUT and is skipped when its
output is current, so an interrupted run continues where it stopped and a finished one returns at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lagoon.automix.fit import objective_weights
from lagoon.automix.runs import derive_config, model_size, scale_model, token_budget
from lagoon.automix.space import MixtureSpace
from lagoon.automix.sweep import Plan, sample_plan_mixtures, settle_plan
from lagoon.configio import to_dict
from lagoon.errors import ConfigError

# A loader's repetition cap is checked after rounding to whole sequences; leave it this much room.
REPETITION_SLACK = 1.02


@dataclass
class Prepared:
    """Everything derived from the config before any training."""

    plan: Plan
    proxy_config: dict[str, Any]
    large_config: dict[str, Any]
    large_tokens: int
    proxy_params: dict[str, int]
    large_params: dict[str, int]


def prepare(config: Any) -> Prepared:
    """Derive the proxy and validation configs and the sweep plan; every mistake is a one-line ConfigError."""
    from lagoon.data import ShardSet

    automix = config.automix
    if not config.data.shards:
        raise ConfigError("data.shards", "is required: the shard set the mixture is over (lagoon data build)")
    if not Path(config.data.shards).is_dir():
        raise ConfigError("data.shards", f"shard directory {config.data.shards} does not exist; build it with "
                                         f"`lagoon data build CONFIG --out {config.data.shards}`")
    shards = ShardSet.open(config.data.shards)
    vocab = len(shards.token_bytes)
    objective_weights(automix, sorted(shards.groups))  # an unknown group fails now, not after the sweep

    proxy_model = dict(automix.proxy.model) if automix.proxy.model else _model_table(config)
    # Proxies evaluate once, at the end, and keep no final checkpoint: their result file marks them done
    # (periodic checkpoints, if `automix.proxy.train.checkpoint_every` asks for them, let one resume).
    quiet = {"progress": False, "num_threads": automix.threads_per_worker, "eval_every": 0, "keep_last": 1}
    data_overrides = {**automix.proxy.data, "repetition_cap": automix.max_epochs * REPETITION_SLACK}
    proxy = derive_config(config, "automix.proxy", proxy_model,
                          {"train": {"checkpoint_every": 0, **automix.proxy.train, **quiet, "checkpoint_at_end": False},
                           "optim": automix.proxy.optim, "data": data_overrides})
    proxy_tokens = token_budget(proxy)

    validation = automix.validation
    large_model = dict(validation.model) if validation.model else scale_model(proxy_model, validation.scale, vocab)[0]
    large_steps = max(1, round(proxy.train.steps * validation.token_scale))
    large = derive_config(config, "automix.validation", large_model,
                          {"train": {**automix.proxy.train, **quiet, "checkpoint_at_end": True, "steps": large_steps,
                                     **validation.train},
                           "optim": automix.proxy.optim, "data": data_overrides})
    large_tokens = token_budget(large)

    target_tokens = automix.target_tokens or large_tokens
    if target_tokens < large_tokens:
        raise ConfigError("automix.target_tokens", f"{target_tokens:,} is below the validation run's budget of "
                                                   f"{large_tokens:,} tokens; repetition is matched to the larger run")
    leaf_tokens = tuple(int(shards.leaf_tokens[leaf]) for leaf in shards.leaves)
    space = MixtureSpace(tuple(shards.leaves), leaf_tokens, target_tokens, automix.max_epochs)
    mixtures = sample_plan_mixtures(space, automix.num_proxies, automix.seed, automix.include_natural,
                                    (automix.concentration[0], automix.concentration[1]), automix.prior_temperature,
                                    automix.min_weight)
    proxy_dict = to_dict(proxy)
    identity = {
        "shard set": _shard_identity(config.data.shards, space),
        "sampling settings": {"seed": automix.seed, "include_natural": automix.include_natural,
                              "concentration": list(automix.concentration),
                              "prior_temperature": automix.prior_temperature, "min_weight": automix.min_weight,
                              "max_epochs": automix.max_epochs, "target_tokens": target_tokens},
        "proxy config": _digest(_training_identity(proxy_dict)),
    }
    domains = [str(shards.leaf_info(leaf).get("domain", leaf.split("/")[0])) for leaf in space.leaves]
    plan = Plan(space, {g: list(v) for g, v in shards.groups.items()}, proxy_tokens, mixtures, identity, domains)
    return Prepared(plan, proxy_dict, to_dict(large), large_tokens, model_size(proxy.model, vocab),
                    model_size(large.model, vocab))


def run(config: Any, out_dir: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Sweep → surrogates → optimized mixture → report (see the module docstring); returns the summary
    of OUT/optimized.json plus the paths written."""
    from lagoon.automix.fit import MIXTURE_FILE, fit_and_optimize
    from lagoon.automix.noise import run_noise
    from lagoon.automix.report import write_report
    from lagoon.automix.sweep import run_sweep

    out_dir = Path(out_dir)
    prepared = prepare(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = settle_plan(out_dir, prepared.plan)
    run_sweep(out_dir, plan, prepared.proxy_config, prepared.proxy_params, config.automix, show_progress)
    run_noise(out_dir, plan, prepared.proxy_config, prepared.proxy_params, config.automix, show_progress)
    summary = fit_and_optimize(out_dir, plan, config.automix)
    report = write_report(out_dir, force=False)
    return {**summary, "mixture_file": str(out_dir / MIXTURE_FILE), "report": str(report)}


def noise(config: Any, out_dir: str | Path, seeds: int | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Train `seeds` (default ``automix.noise_seeds``) proxies at the natural mixture with other seeds and
    return OUT/noise.json's summary: every group's seed-to-seed standard deviation (see `lagoon.automix.noise`).
    Needs no sweep; proxy 0 joins the runs once the sweep has trained it."""
    import dataclasses

    from lagoon.automix.noise import run_noise
    from lagoon.automix.sweep import settle_plan

    automix = config.automix if seeds is None else dataclasses.replace(config.automix, noise_seeds=seeds)
    if automix.noise_seeds < 2:
        raise ConfigError("automix.noise_seeds", f"needs at least 2 seeds to measure a spread, got {automix.noise_seeds}")
    out_dir = Path(out_dir)
    prepared = prepare(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = settle_plan(out_dir, prepared.plan)
    summary = run_noise(out_dir, plan, prepared.proxy_config, prepared.proxy_params, automix, show_progress)
    assert summary is not None
    return summary


def validate(config: Any, out_dir: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Train the optimized, natural and uniform mixes at the larger scale (resumable); returns the summary
    written to OUT/validation.json."""
    from lagoon.automix.report import write_report
    from lagoon.automix.validation import run_validation

    out_dir = Path(out_dir)
    prepared = prepare(config)
    plan = settle_plan(out_dir, prepared.plan) if (out_dir / "plan.json").is_file() else None
    if plan is None:
        from lagoon.errors import LagoonError

        raise LagoonError(f"{out_dir} has no sweep; run `lagoon automix run CONFIG --out {out_dir}` first")
    summary = run_validation(out_dir, plan, config.automix, prepared, show_progress)
    write_report(out_dir)
    return summary


# Keys that change how a run is shown or scheduled, not what it computes.
_PRESENTATION_KEYS = {"progress", "num_threads", "log_every", "keep_last", "checkpoint_every", "checkpoint_at_end"}
_LOADER_KEYS = ("seq_len", "global_batch_size", "seed", "repetition_cap")


def _training_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a proxy's config its results depend on (a changed one invalidates the sweep)."""
    return {"model": config["model"], "optim": config.get("optim", {}),
            "train": {k: v for k, v in config["train"].items() if k not in _PRESENTATION_KEYS},
            "data": {k: config["data"][k] for k in _LOADER_KEYS}}


def _model_table(config: Any) -> dict[str, Any]:
    table = to_dict(config.model)
    for derived in ("layer_types", "mlp_layer_types", "num_attention_heads_per_layer"):
        table.pop(derived, None)
    return table


def _shard_identity(path: str, space: MixtureSpace) -> str:
    manifest = Path(path) / "manifest.json"
    content = manifest.read_bytes() if manifest.is_file() else b""
    return _digest({"manifest": hashlib.sha256(content).hexdigest(), "leaves": list(space.leaves),
                    "tokens": list(space.leaf_tokens)})


def _digest(data: Any) -> str:
    import json

    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
