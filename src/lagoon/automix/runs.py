"""The training runs AutoMixer launches (proxies, validation runs), described as plain data so they can be
shipped to a worker process or a Ray task, and the function that trains one.

A run is an ordinary ``lagoon train`` run: `derive_config` takes the pipeline config, replaces ``[model]``
and overrides keys of ``[train]``, ``[optim]`` and ``[data]``, sets the mixture, and validates the result
with the same loader the CLI uses, so a bad override fails with its dotted name before anything trains.
`train_run` then calls `lagoon.train.run_training` in the worker, which resumes from the run directory's
checkpoints and does nothing for a finished run.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lagoon.configio import from_dict, to_dict
from lagoon.errors import ConfigError

# Checkpoints of a proxy are only for resuming an interrupted one; one is enough.
KEEP_CHECKPOINTS = 1


@dataclass
class RunSpec:
    """One training run: where it lives, its whole config as plain data, and the leaf subset it may read."""

    name: str
    """Human label ("proxy 7", "validation optimized seed 1")."""
    run_dir: str
    config: dict[str, Any]
    """The full lagoon config (``to_dict`` form) with the mixture set in ``data.weights``."""
    leaf_fraction: float
    """Share of every leaf's tokens the run may read: its token budget over the target run's, so that it
    repeats each leaf exactly as often as the target run would (see `lagoon.automix.space`)."""
    params: dict[str, int]
    """Parameter counts of the run's model (`model_size`), counted once by the driver."""


def derive_config(root: Any, where: str, model: dict[str, Any] | None = None,
                  overrides: dict[str, dict[str, Any]] | None = None) -> Any:
    """`root` (a `LagoonConfig`) with ``[model]`` replaced by `model` (when given) and each section's keys in
    `overrides` replaced; errors name the field under `where` (e.g. ``automix.proxy.train.steps``)."""
    from lagoon.config import LagoonConfig

    data = to_dict(root)
    if model:
        data["model"] = copy.deepcopy(model)
    for section, values in (overrides or {}).items():
        data[section] = {**data.get(section, {}), **copy.deepcopy(values)}
    try:
        return from_dict(LagoonConfig, data)
    except ConfigError as error:
        raise error.under(where) from None


def token_budget(config: Any) -> int:
    """Training tokens of a run: steps × sequences per step × tokens per sequence."""
    return config.train.steps * config.data.global_batch_size * config.data.seq_len


def scale_model(model: dict[str, Any], factor: float, vocab_size: int) -> tuple[dict[str, Any], float]:
    """A ``[model]`` table like `model` with about `factor` × its parameters, and the ratio achieved.

    Widens the model (hidden size, head width and every MLP width by one multiplier from 1 to 8 in steps of
    1/8, rounded to multiples of 8) at its own depth or twice it, choosing the candidate whose total
    parameter count is closest to the target on a log scale. The count grows with the width, so each depth
    is a bisection. Counts use the shard set's vocabulary, as training does.
    """
    from lagoon.configio import from_dict as build
    from lagoon.model import ModelConfig, count_parameters

    base_config = build(ModelConfig, {**model, "vocab_size": vocab_size}, "model")
    base = count_parameters(base_config).total

    def round8(value: float) -> int:
        return max(8, int(round(value / 8)) * 8)

    def candidate(eighths: int, depth: int) -> dict[str, Any]:
        width = eighths / 8
        table = {**model, "vocab_size": vocab_size,
                 "hidden_size": round8(base_config.hidden_size * width),
                 "head_dim": round8(base_config.head_dim * width),
                 "intermediate_size": round8(base_config.intermediate_size * width),
                 "moe_intermediate_size": round8(base_config.moe_intermediate_size * width),
                 "shared_expert_intermediate_size": round8(base_config.shared_expert_intermediate_size * width),
                 "num_hidden_layers": base_config.num_hidden_layers * depth}
        for derived in ("layer_types", "mlp_layer_types", "num_attention_heads_per_layer"):
            table.pop(derived, None)
        return table

    def ratio(eighths: int, depth: int) -> float:
        return count_parameters(build(ModelConfig, candidate(eighths, depth), "model")).total / base

    best: tuple[float, dict[str, Any], float] | None = None
    for depth in (1, 2):
        low, high = 8, 64  # smallest width whose ratio reaches the factor, by bisection
        while low < high:
            middle = (low + high) // 2
            if ratio(middle, depth) < factor:
                low = middle + 1
            else:
                high = middle
        for eighths in {max(8, low - 1), low}:
            achieved = ratio(eighths, depth)
            distance = abs(math.log(achieved / factor))
            if best is None or distance < best[0]:
                best = (distance, candidate(eighths, depth), achieved)
    assert best is not None
    return best[1], best[2]


def model_size(model: Any, vocab_size: int) -> dict[str, int]:
    """Total, active and compute parameters of a `ModelConfig` at the shard set's vocabulary.

    "Compute" parameters are the active ones less the input embedding, whose lookup costs no
    multiply-adds (the LM head does, and is counted).
    """
    import dataclasses

    from lagoon.model import count_parameters

    resolved = dataclasses.replace(model, vocab_size=vocab_size)
    counts = count_parameters(resolved)
    return {"params_total": counts.total, "params_active": counts.active, "params_embedding": counts.embedding,
            "params_compute": counts.active - vocab_size * resolved.hidden_size}


# --------------------------------------------------------------------------------------------------
# In the worker

_SHARDS: dict[str, Any] = {}


def _open_shards(path: str) -> Any:
    """One open `ShardSet` per worker process and directory (proxies share it)."""
    from lagoon.data import ShardSet

    if path not in _SHARDS:
        _SHARDS[path] = ShardSet.open(path)
    return _SHARDS[path]


def train_run(spec: RunSpec) -> dict[str, Any]:
    """Train (or resume, or just read back) one run; returns its held-out bits per byte and bookkeeping.

    Runs in a worker process or a Ray task. The run's own log lines go to ``RUN_DIR/train.log`` so that
    many proxies in flight do not interleave on the terminal.
    """
    import torch

    from lagoon.config import LagoonConfig
    from lagoon.train import run_training

    config = from_dict(LagoonConfig, spec.config)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    # Every leaf cut to the run's share of the target budget: the run repeats each leaf as the target would.
    shards = _open_shards(config.data.shards).subset(spec.leaf_fraction)
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started, started_at = time.perf_counter(), time.time()
    with open(run_dir / "train.log", "a") as log, contextlib.redirect_stderr(log):
        result = run_training(config, run_dir, shards=shards)
    return {
        "worker": _worker_kind(), **_placement_seen(),
        "started_at": started_at, "finished_at": time.time(),
        "name": spec.name, "run_dir": str(run_dir), "bpb": dict(result.eval_bpb), "train_loss": result.loss,
        "steps": result.step, "tokens": token_budget(config), "wall_s": time.perf_counter() - started,
        "already_finished": result.already_finished, **spec.params,
        # Training compute ≈ 6 · N · D (Kaplan et al. 2020, §2.1), N = parameters a token passes through.
        "flops": 6.0 * spec.params["params_compute"] * token_budget(config),
        "pid": os.getpid(),
    }


def _placement_seen() -> dict[str, Any]:
    """The GPUs this run could see (``CUDA_VISIBLE_DEVICES``; under Ray, the GPU ids Ray gave its task)."""
    import sys

    seen: dict[str, Any] = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            seen["ray_gpu_ids"] = [str(i) for i in ray.get_gpu_ids()]
            with contextlib.suppress(AssertionError):  # only a Ray worker has assigned resources
                seen["ray_resources"] = dict(ray.get_runtime_context().get_assigned_resources())
    return seen


def _worker_kind() -> str:
    """"ray:WORKER" inside a Ray task, "process" otherwise (recorded so a sweep shows where it ran)."""
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            return f"ray:{ray.get_runtime_context().get_worker_id()[:12]}"
    return "process"
