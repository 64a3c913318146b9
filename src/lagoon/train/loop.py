"""`run_training`: the whole of ``lagoon train`` as one call (the CLI, AutoMixer's proxies and the demo use it).

    result = run_training(config, "runs/tiny")        # resumes from runs/tiny/checkpoints when present
    result.eval_bpb                                     # {"code": 2.1, "math": 1.4, ...}

Everything that can be wrong with the inputs (config values, the shard directory, the mixture, the
batch shape against the world size, the init checkpoint) is checked before the run directory is
touched, so a mistake ends with one line and leaves nothing behind. Then, in order: resume from the
newest verified checkpoint (or start fresh), train to ``train.steps`` with evaluation, metrics and
checkpoints on schedule, and a final checkpoint. Calling it again on a finished run does nothing but
return the stored result.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lagoon.configio import dumps_toml, to_dict
from lagoon.errors import ConfigError, LagoonError
from lagoon.train import checkpoint as ckpt
from lagoon.train.distributed import Distributed, setup
from lagoon.train.hooks import Hooks, call_hooks
from lagoon.train.metrics import EVAL_PREFIX, MetricsWriter
from lagoon.train.trainer import Trainer


@dataclass
class TrainResult:
    """What a finished (or already finished) run reports."""

    run_dir: Path
    step: int
    """Optimizer steps completed."""
    loss: float | None
    """Training loss of the last step."""
    eval_bpb: dict[str, float] = field(default_factory=dict)
    """Held-out bits per byte per capability group, from the last evaluation."""
    checkpoint: Path | None = None
    """The newest checkpoint directory (loads with ``lagoon.model.from_pretrained``)."""
    resumed_from: int | None = None
    """The step this invocation resumed from (None for a fresh start)."""
    already_finished: bool = False
    """True when the run directory held a finished run and nothing was trained."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The last metrics line with the last evaluation merged in."""


@dataclass
class _Inputs:
    """Everything validated before the run directory is created."""

    shards: Any
    mixture: Any
    config: Any


def _say(dist_info: Distributed | None, message: str) -> None:
    if dist_info is None or dist_info.is_main:
        print(f"lagoon: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Checks and construction before any file is written


def _open_data(config: Any, shards: Any | None) -> tuple[Any, Any]:
    from lagoon.data.mixture import resolve_mixture
    from lagoon.data.shards import ShardSet

    data = config.data
    if shards is None:
        if not data.shards:
            raise ConfigError("data.shards", "is required: the directory of a built shard set "
                                             "(lagoon data build CONFIG --out DIR)")
        if not Path(data.shards).is_dir():
            raise ConfigError("data.shards", f"shard directory {data.shards} does not exist; build it with "
                                             f"`lagoon data build CONFIG --out {data.shards}`")
        shards = ShardSet.open(data.shards)
    mixture = resolve_mixture(data, shards)
    budget = config.train.steps * data.global_batch_size * data.seq_len
    mixture.check_repetition(shards, budget, data.repetition_cap)
    return shards, mixture


def _check_batch(config: Any, world_size: int) -> None:
    data, train = config.data, config.train
    per_rank, remainder = divmod(data.global_batch_size, world_size)
    if remainder or per_rank == 0:
        raise ConfigError("data.global_batch_size", f"{data.global_batch_size} sequences cannot be split evenly "
                                                    f"over {world_size} data-parallel ranks")
    if per_rank % train.grad_accum:
        raise ConfigError("train.grad_accum", f"{per_rank} sequences per rank cannot be split into "
                                              f"{train.grad_accum} micro-batches")


def _resolve_model(config: Any, shards: Any) -> tuple[Any, Path | None, Any]:
    """The model config (fresh, or `init_from`'s), the directory to load weights from (None: initialise) and the
    config with [model] resolved against the tokenizer. Reads config files only: no weights yet."""
    from lagoon.model.hf import read_config

    train = config.train
    vocab = len(shards.token_bytes)
    if train.init_from:
        if not Path(train.init_from).is_dir():
            raise ConfigError("train.init_from", f"checkpoint directory {train.init_from} does not exist")
        model_config = read_config(Path(train.init_from))
        if model_config.vocab_size < vocab:
            raise ConfigError("train.init_from", f"the checkpoint's vocabulary ({model_config.vocab_size}) is smaller "
                                                 f"than the shard set's tokenizer ({vocab} tokens)")
        return model_config, Path(train.init_from), dataclasses.replace(config, model=model_config)
    model_config = config.model
    if train.vocab_from_data:
        model_config = dataclasses.replace(model_config, vocab_size=vocab)
        model_config.validate()
    elif model_config.vocab_size < vocab:
        raise ConfigError("model.vocab_size", f"{model_config.vocab_size} is smaller than the shard set's tokenizer "
                                              f"({vocab} tokens); set it to {vocab} or train.vocab_from_data = true")
    return model_config, None, dataclasses.replace(config, model=model_config)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# --------------------------------------------------------------------------------------------------


def run_training(config: Any, run_dir: str | os.PathLike, hooks: list[Hooks] | None = None,
                 shards: Any | None = None) -> TrainResult:
    """Train (or resume, or just report) the run in `run_dir`; see the module docstring.

    `shards` may be an already-open `ShardSet` (AutoMixer reuses one across many proxies).
    Under torchrun every rank calls this; rank 0 alone writes metrics and checkpoints.
    """
    from lagoon.data.loader import MixtureLoader
    from lagoon.parallel.engine import Engine, optimizer_mode
    from lagoon.parallel.mesh import ParallelDims

    hooks = list(hooks or [])
    if not any(type(hook).__name__ == "SDCHooks" for hook in hooks):
        from lagoon.sdc.hooks import sdc_hooks  # [sdc]: replica checks, reactions, fault injection

        hooks = [*sdc_hooks(config), *hooks]
    run_dir = Path(run_dir)
    train = config.train
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    _check_batch(config, world_size)
    shards, mixture = _open_data(config, shards)
    if train.eval_groups:
        for name in train.eval_groups:
            if name not in shards.eval_groups:
                raise ConfigError("train.eval_groups", f"no held-out set for group {name!r} in the shard set "
                                                       f"(it has {', '.join(shards.eval_groups)})")
    model_config, source, config = _resolve_model(config, shards)
    optimizer_mode(ParallelDims.resolve(config.parallel, world_size), config.optim.distributed)  # a bad layout: now

    dist_info = setup(train.device)
    try:
        _check_batch(config, dist_info.world_size)
        data = config.data
        loader = MixtureLoader(shards, mixture, seq_len=data.seq_len, global_batch_size=data.global_batch_size,
                               seed=data.seed, rank=dist_info.rank, world_size=dist_info.world_size,
                               repetition_cap=data.repetition_cap)
        engine = Engine.build(model_config, config.parallel, config.optim, dist_info, source=source, seed=train.seed)
        _seed_everything(train.seed)
        if dist_info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        dist_info.barrier()
        metrics = MetricsWriter(run_dir, active=dist_info.is_main)
        trainer = Trainer(config, run_dir, dist_info, engine, loader, shards, hooks, metrics,
                          lambda message: _say(dist_info, message))
        try:
            return _run(trainer)
        finally:
            metrics.close()
    finally:
        dist_info.close()


def _run(trainer: Trainer) -> TrainResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    train, dist_info, run_dir = trainer.train, trainer.dist, trainer.run_dir
    resumed_from = None
    path = trainer.find_checkpoint()
    if path is not None:
        trainer.restore(path)
        resumed_from = trainer.step
        if trainer.step < train.steps:
            trainer.metrics.event("resume", step=trainer.step, path=str(path.relative_to(run_dir)))
            trainer.say(f"resuming from {path.name} (step {trainer.step} of {train.steps})")
    else:
        trainer.metrics.resume_at(0)
    if trainer.step >= train.steps:
        return _result(trainer, resumed_from, already_finished=True)
    if dist_info.is_main:
        staging = run_dir / f".config.toml.tmp-{os.getpid()}"
        staging.write_text(dumps_toml(to_dict(trainer.config)))
        staging.replace(run_dir / "config.toml")

    started = time.perf_counter()
    columns = [TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not (dist_info.is_main and train.progress), transient=False) as progress:
        task = progress.add_task("", total=train.steps, completed=trainer.step)
        while trainer.step < train.steps:
            row = trainer.train_step()
            ctx = trainer.context(row)
            call_hooks(trainer.hooks, "after_optimizer_step", ctx)
            trainer.sdc_digest = ctx.sdc_digest
            reason = trainer.rollback_requested(ctx.rollback_reason) if trainer.hooks else None
            if reason:
                _rollback(trainer, reason)
                progress.update(task, completed=trainer.step)
                continue
            last = trainer.step == train.steps
            evaluate = last or (train.eval_every and trainer.step % train.eval_every == 0)
            save = (last and train.checkpoint_at_end) or (train.checkpoint_every and
                                                          trainer.step % train.checkpoint_every == 0)
            if evaluate:
                row.update(trainer.evaluate())
            row["elapsed_s"] = time.perf_counter() - started
            trainer.last_row = {k: v for k, v in row.items() if not k.startswith(EVAL_PREFIX)}
            if evaluate or save or trainer.step % train.log_every == 0 or trainer.step == 1:
                trainer.metrics.write(row)
            if save:
                trainer.save()
            progress.update(task, completed=trainer.step,
                            description=f"loss {row['loss']:.3f}  lr {row['lr']:.2e}  {row['tokens_per_s']:,.0f} tok/s")
    return _result(trainer, resumed_from, already_finished=False)


def _rollback(trainer: Trainer, reason: str) -> None:
    """Restore the newest verified checkpoint after a hook asked for it (every rank together)."""
    trainer.rollbacks += 1
    if trainer.rollbacks > trainer.train.max_rollbacks:
        raise LagoonError(f"rolled back {trainer.train.max_rollbacks} times already; stopping at step {trainer.step} "
                          f"({reason})")
    path = trainer.find_checkpoint()
    if path is None:
        raise LagoonError(f"a rollback was requested at step {trainer.step} ({reason}) but there is no verified "
                          f"checkpoint to return to")
    from_step = trainer.step
    trainer.restore(path)
    trainer.say(f"rolled back from step {from_step} to {path.name}: {reason}")
    trainer.metrics.event("rollback", from_step=from_step, step=trainer.step, reason=reason)


def _result(trainer: Trainer, resumed_from: int | None, already_finished: bool) -> TrainResult:
    newest = ckpt.step_dirs(ckpt.checkpoints_root(trainer.run_dir))
    summary = trainer.summary()
    return TrainResult(run_dir=trainer.run_dir, step=trainer.step, loss=summary.get("loss"),
                       eval_bpb=dict(trainer.last_eval), checkpoint=newest[0][1] if newest else None,
                       resumed_from=resumed_from, already_finished=already_finished, metrics=summary)


__all__ = ["Hooks", "TrainResult", "call_hooks", "run_training"]
