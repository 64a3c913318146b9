"""One training run's moving parts and its step: micro-batches, DDP, the update, evaluation, checkpoints.

`Trainer` drives an engine (`lagoon.parallel.engine`: the model as this rank holds it — whole, DDP-wrapped,
or FSDP2/HSDP-sharded — and its optimizer) with the loader and the counters; `lagoon.train.loop.run_training`
builds it and drives it. Each optimizer step:

    1. take this rank's slice of the global batch and split it into `grad_accum` micro-batches;
    2. forward/backward each one, weighting its mean loss by its share of the global batch's targets
       (so the gradient is the global token-mean's, for any world size and accumulation);
       gradients are reduced only on the last micro-batch (DDP no_sync, FSDP2's deferred reduce-scatter);
    3. one optimizer step (clipping inside), zero the gradients, the router-bias step;
    4. the hooks' quiet point, then metrics, evaluation and checkpoint as scheduled.

Shape legend: B sequences (this rank's micro-batch), T positions.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lagoon.configio import to_dict
from lagoon.errors import LagoonError
from lagoon.model import IGNORE_INDEX
from lagoon.train import checkpoint as ckpt
from lagoon.train.distributed import Distributed, all_sum, broadcast_object, gather_objects
from lagoon.train.evaluate import evaluate_bpb
from lagoon.train.hooks import HookContext, Hooks, call_hooks
from lagoon.train.metrics import EVAL_PREFIX, MetricsWriter
from lagoon.train.rng import capture_rng, restore_rng
from lagoon.train.schedule import lr_scale


class TrainingDiverged(LagoonError):
    """The training loss became NaN or infinite."""


class Trainer:
    def __init__(self, config: Any, run_dir: Path, dist_info: Distributed, engine: Any, loader: Any, shards: Any,
                 hooks: list[Hooks], metrics: MetricsWriter, say):
        self.config = config
        self.train = config.train
        self.run_dir = run_dir
        self.dist = dist_info
        self.engine = engine
        self.model = engine.model
        self.optimizer = engine.optimizer
        self.loader = loader
        self.shards = shards
        self.hooks = hooks
        self.metrics = metrics
        self.say = say
        self.step = 0
        self.tokens_seen = 0
        self.sdc_digest: str | None = None
        self.last_eval: dict[str, float] = {}
        self.last_row: dict[str, Any] = {}
        self.rollbacks = 0
        self.autocast_dtype = autocast_dtype(self.train.dtype, dist_info.device)
        self.wrapped: nn.Module = engine.wrapped

    # ----------------------------------------------------------------------------------------------
    def context(self, metrics: dict[str, Any] | None = None) -> HookContext:
        ctx = HookContext(step=self.step, model=self.model, optimizer=self.optimizer, group=self.dist.group,
                          rank=self.dist.rank, world_size=self.dist.world_size, run_dir=self.run_dir,
                          config=self.config, wrapped_model=self.wrapped, sdc_digest=self.sdc_digest,
                          metrics=metrics if metrics is not None else {})
        return ctx

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.autocast_dtype)

    # ----------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        """One optimizer step; returns its metrics (global over ranks)."""
        started = time.perf_counter()
        train, data, device = self.train, self.config.data, self.dist.device
        batch = next(self.loader)
        micro = data.global_batch_size // self.dist.world_size // train.grad_accum
        pieces = [(batch.input_ids[i : i + micro], batch.targets[i : i + micro], batch.document_ids[i : i + micro])
                  for i in range(0, batch.input_ids.shape[0], micro)]
        assert len(pieces) == train.grad_accum, (batch.input_ids.shape, micro)
        counts = [int((targets != IGNORE_INDEX).sum()) for _, targets, _ in pieces]
        (global_count,) = all_sum([float(sum(counts))], self.dist, device)
        if global_count == 0:
            raise LagoonError(f"step {self.step + 1}: the global batch has no target tokens")

        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        aux_sum = torch.zeros((), dtype=torch.float64, device=device)
        for index, (input_ids_BT, targets_BT, document_ids_BT) in enumerate(pieces):
            last = index == len(pieces) - 1
            with self.engine.micro_batch(last):
                with self._autocast():
                    output = self.wrapped(input_ids_BT.to(device, non_blocking=True),
                                          targets=targets_BT.to(device, non_blocking=True),
                                          document_ids=document_ids_BT.to(device, non_blocking=True))
                # DDP, FSDP2 and distributed Muon average gradients over ranks, hence the world-size factor.
                share = counts[index] * self.dist.world_size / global_count
                aux = sum(output.aux_losses.values(), torch.zeros((), device=device))
                (output.lm_loss * share + aux / len(pieces)).backward()
            loss_sum += output.lm_loss.detach().double() * counts[index]
            aux_sum += aux.detach().double() / len(pieces)

        # What this rank holds at its peak of training state (gradients present), measured once.
        memory = {f"state_bytes/{k}": v for k, v in self.engine.state_bytes().items()} if self.step == 0 else {}
        scale = lr_scale(train, self.step)
        self.optimizer.set_lr_scale(scale)
        stats = self.optimizer.step(max_grad_norm=train.max_grad_norm or None)
        self.optimizer.zero_grad()
        load = self.model.update_router_biases(self.dist.group)
        loss_total, aux_total = all_sum([float(loss_sum), float(aux_sum)], self.dist, device)
        loss = loss_total / global_count
        self.step += 1
        step_tokens = data.global_batch_size * data.seq_len
        self.tokens_seen += step_tokens
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        row: dict[str, Any] = {"step": self.step, "loss": loss}
        if aux_total:
            row["aux_loss"] = aux_total / self.dist.world_size
        row.update(lr=self.base_lr() * scale, lr_scale=scale)
        row.update({key: float(value) for key, value in (stats or {}).items()})   # the optimizer's lr wins
        row.update(tokens=self.tokens_seen, tokens_per_s=step_tokens / elapsed, **load, **memory)
        if not math.isfinite(loss):
            self.metrics.write(row)
            raise TrainingDiverged(f"the training loss is {loss} at step {self.step}; lower optim.lr or raise "
                                   f"train.warmup_fraction, then resume from the last checkpoint")
        return row

    def base_lr(self) -> float:
        """The peak rate the logged ``lr`` follows: Muon's, or AdamW's in an AdamW-only run."""
        optim = self.config.optim
        return float(optim.lr if optim.name == "muon" else optim.adamw_lr)

    # ----------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        train = self.train
        # FSDP2's forward is a collective; each rank evaluates its own batches on a gathered, unsharded copy.
        model = self.engine.unsharded_copy()
        results = evaluate_bpb(model, self.shards, groups=train.eval_groups, max_tokens=train.eval_tokens,
                               seq_len=self.config.data.seq_len, batch_size=train.eval_batch_size, device=self.dist.device,
                               autocast_dtype=self.autocast_dtype, group=self.dist.group)
        self.last_eval = results
        return {f"{EVAL_PREFIX}{group}": value for group, value in results.items()}

    # ----------------------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint of the current step (a collective: every rank calls it)."""
        ctx = self.context()
        call_hooks(self.hooks, "before_checkpoint_save", ctx)
        self.sdc_digest = ctx.sdc_digest
        state = ckpt.CheckpointState(step=self.step, tokens_seen=self.tokens_seen, world_size=self.dist.world_size,
                                     sdc_digest=self.sdc_digest, last_metrics=self.summary(), config=to_dict(self.config))
        path = self.engine.save(self.run_dir, state, self.loader.state_dict(), capture_rng(), self.shards.tokenizer_dir,
                                self.train.keep_last)
        if path is not None:
            self.metrics.event("checkpoint", step=self.step, path=str(path.relative_to(self.run_dir)))
        return path

    def summary(self) -> dict[str, Any]:
        """The latest metrics line merged with the latest evaluation (what a finished run reports)."""
        return {**self.last_row, **{f"{EVAL_PREFIX}{g}": v for g, v in self.last_eval.items()}}

    def restore(self, path: Path) -> None:
        """Load checkpoint `path` into the model, optimizer, loader and RNGs (every rank)."""
        state = ckpt.read_state(path)
        self.engine.load(path)   # refuses a checkpoint of another model shape, naming it
        self.loader.load_state_dict(ckpt.read_loader_state(path))
        restore_rng(ckpt.read_rng_state(path, self.dist.rank))
        self.step, self.tokens_seen, self.sdc_digest = state.step, state.tokens_seen, state.sdc_digest
        self.last_row = {k: v for k, v in state.last_metrics.items() if not k.startswith(EVAL_PREFIX)}
        self.last_eval = {k[len(EVAL_PREFIX):]: v for k, v in state.last_metrics.items() if k.startswith(EVAL_PREFIX)}
        for block in self.model.moe_blocks():
            block.expert_counts = None
        self.metrics.resume_at(self.step)
        call_hooks(self.hooks, "after_checkpoint_load", self.context())

    def find_checkpoint(self) -> Path | None:
        """Rank 0 picks the newest verified checkpoint and says why it skipped others; every rank gets it."""
        chosen = None
        if self.dist.is_main:
            root = ckpt.checkpoints_root(self.run_dir)

            def skipped(message: str) -> None:
                self.say(message)
                self.metrics.event("checkpoint_skipped", message=message)

            ckpt.remove_staging(root, skipped)
            path = ckpt.newest_verified(self.run_dir, skipped)
            chosen = None if path is None else str(path)
        chosen = broadcast_object(chosen, self.dist)
        return None if chosen is None else Path(chosen)

    def rollback_requested(self, reason: str | None) -> str | None:
        """Combine the ranks' rollback requests: any rank's request rolls every rank back."""
        if self.dist.group is None:
            return reason
        flag = torch.tensor([1.0 if reason else 0.0], device=self.dist.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.dist.group)
        if flag.item() == 0:
            return None
        reasons = gather_objects(reason, self.dist)
        message = "; ".join(f"rank {r}: {text}" for r, text in enumerate(reasons) if text) if reasons else None
        return broadcast_object(message, self.dist)


def autocast_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The forward pass's autocast dtype, or None for plain float32."""
    if choice == "float32":
        return None
    if choice == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
