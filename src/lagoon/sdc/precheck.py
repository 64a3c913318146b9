"""Pre-reduction checks: each rank's own gradients and loss, looked at before they are averaged away.

Once gradients are all-reduced, a NaN from one rank is a NaN everywhere and nobody knows whose it was.
So each rank measures its *local* gradients before the reduction — their squared norm, one fused pass
per bucket (a NaN or Inf anywhere makes it non-finite) — and its local loss:

- under DDP, inside a communication hook that wraps DDP's own all-reduce (same arithmetic: divide by
  the world size, then sum), per gradient bucket, on the device, without a host sync;
- when the optimizer reduces gradients itself (distributed Muon) or in a single process, from the
  ``.grad`` tensors just before the optimizer step.

At each optimizer step the ranks all-gather [non-finite flag, squared norm, loss] (one tiny collective on
the SDC group, run in the background while the optimizer works, and awaited at the quiet point — or
before the update when ``skip_spikes`` needs the decision first), and every rank reaches the same
decisions:

- a rank with non-finite local gradients is named (``sdc_nonfinite``);
- a rank whose local gradient norm exceeds ``grad_spike_factor`` × its running mean is named
  (``sdc_grad_spike``) — data differs across ranks, so this is a hint, not a verdict;
- a global loss above ``loss_spike_factor`` × its running mean is flagged (``sdc_loss_spike``).

With ``skip_spikes``, a step flagged for non-finite gradients or a loss spike is skipped: the update is
not applied (the optimizer reports ``skipped = 1``) and the batch is dropped. Running means start after
``spike_warmup`` steps and never absorb a flagged value.

The gathered statistics of every step since the last checkpoint are kept (`rows`): they are each rank's
own state *before* the reduction mixes it with the others', which is what tells, after a replay, on which
replica a transient fault began (`first_divergence`, used by `lagoon.sdc.hooks`).

The monitor attaches to the live optimizer by wrapping its ``step`` method (and, under DDP, registering
the communication hook), so the optimizer needs no SDC-specific code.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lagoon.sdc.config import SDCConfig
from lagoon.sdc.replicas import ReplicaGroup


class PreReductionMonitor:
    def __init__(self, config: SDCConfig, replicas: ReplicaGroup):
        self.config = config
        self.replicas = replicas
        self.pending: list[tuple[str, dict[str, Any]]] = []
        """Events found during the step, recorded at the next quiet point."""
        self.skipped = 0
        self.grad_means: list[float | None] = [None] * replicas.size
        self.loss_mean: float | None = None
        self.history = 0
        self._square_sum: torch.Tensor | None = None
        self._losses: list[torch.Tensor] = []
        self._ddp = False
        self._in_flight = None
        self.active = True
        """False: pass everything through untouched (the overhead benchmark's baseline)."""
        self._optimizer = None
        self._real_step = None
        self._step_index = 0
        self.rows: dict[int, torch.Tensor] = {}
        """step → [W, 3] float64: every replica's [non-finite flag, squared local gradient norm, local loss] of
        that step, as gathered (kept from the last checkpoint on; `forget_through` drops older steps)."""

    @property
    def enabled(self) -> bool:
        c = self.config
        return c.nonfinite_check or c.grad_spike_factor > 0 or c.loss_spike_factor > 0

    # ----------------------------------------------------------------------------------------------
    def attach(self, model: nn.Module, wrapped: nn.Module | None, optimizer: Any, step: int) -> None:
        """Start watching: the DDP comm hook (if DDP), a forward hook for the loss, and optimizer.step."""
        self._step_index = step
        if isinstance(wrapped, DistributedDataParallel):
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def hook(state, bucket):
                if self.active:
                    self._observe(bucket.buffer())
                return allreduce_hook(state, bucket)

            wrapped.register_comm_hook(wrapped.process_group, hook)
            self._ddp = True
        model.register_forward_hook(self._capture_loss)
        self._optimizer = optimizer
        self._real_step = optimizer.step
        optimizer.step = self._step

    def _capture_loss(self, module, args, output) -> None:
        loss = getattr(output, "lm_loss", None)
        if self.active and loss is not None and torch.is_grad_enabled():
            self._losses.append(loss.detach().float())

    @torch.no_grad()
    def _observe(self, gradient: torch.Tensor) -> None:
        """Accumulate one flat gradient's squared norm: one fused pass, on the device, no host sync. A NaN or
        Inf anywhere makes the norm non-finite, which is how non-finite gradients are noticed."""
        square = torch.linalg.vector_norm(gradient, dtype=torch.float32).double().square()
        self._square_sum = square if self._square_sum is None else self._square_sum + square

    def _local_gradients(self) -> None:
        grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
                 for p in self._optimizer.trainable() if p.grad is not None]
        if grads:
            norms = torch._foreach_norm(grads, 2.0)
            square = torch.stack([n.double() for n in norms]).square().sum()
            self._square_sum = square if self._square_sum is None else self._square_sum + square

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _step(self, max_grad_norm: float | None = None) -> dict[str, float]:
        if not self.active:
            return self._real_step(max_grad_norm)
        self._settle()
        self._step_index += 1
        if not self._ddp:
            self._local_gradients()
        square = float(self._square_sum) if self._square_sum is not None else 0.0
        loss = float(torch.stack(self._losses).mean()) if self._losses else float("nan")
        self._square_sum, self._losses = None, []
        local = torch.tensor([0.0 if math.isfinite(square) else 1.0, square, loss], dtype=torch.float64)
        finish = self.replicas.start_all_gather(local, "pre-reduction statistics", self._step_index - 1)
        if not self.config.skip_spikes:  # nothing to decide before the update: settle at the quiet point
            self._in_flight = (finish, self._step_index)
            return self._real_step(max_grad_norm)
        stats_W3 = finish()
        if self._decide(stats_W3, self._step_index):
            self.skipped += 1
            optimizer = self._optimizer
            lr = optimizer.muon_lr if optimizer.config.name == "muon" else optimizer.adamw_lr
            norm = math.sqrt(float(stats_W3[:, 1].sum())) if self._ddp else float("nan")
            return {"grad_norm": norm, "clip_coef": 1.0, "lr": lr, "adamw_lr": optimizer.adamw_lr, "skipped": 1.0}
        return self._real_step(max_grad_norm)

    def _settle(self) -> None:
        """Wait for a statistics gather still in flight and decide on it."""
        if self._in_flight is not None:
            finish, step = self._in_flight
            self._in_flight = None
            self._decide(finish(), step)

    def _decide(self, stats_W3: torch.Tensor, step: int) -> bool:
        """Record events for step `step`'s statistics; True when its update should be skipped."""
        config = self.config
        self.rows[step] = stats_W3.detach().to(torch.float64).clone()
        rows = stats_W3.tolist()
        names = self.replicas
        skip = False
        if config.nonfinite_check:
            bad = [w for w, row in enumerate(rows) if row[0] > 0]
            if bad:
                self.pending.append(("sdc_nonfinite", {
                    "step": step, "ranks": [names.ranks[w] for w in bad], "hosts": [names.hosts[w] for w in bad],
                    "detail": "NaN or Inf in the rank's local gradients before the reduction"}))
                skip = skip or config.skip_spikes
        warm = self.history >= config.spike_warmup
        if config.grad_spike_factor > 0:
            spikes = []
            for w, row in enumerate(rows):
                norm, mean = math.sqrt(max(row[1], 0.0)), self.grad_means[w]
                if warm and mean is not None and mean > 0 and norm > config.grad_spike_factor * mean:
                    spikes.append((w, norm, mean))
                elif math.isfinite(norm):
                    self.grad_means[w] = norm if mean is None else config.spike_ema * mean + (1 - config.spike_ema) * norm
            if spikes:
                self.pending.append(("sdc_grad_spike", {
                    "step": step, "ranks": [names.ranks[w] for w, _, _ in spikes],
                    "hosts": [names.hosts[w] for w, _, _ in spikes],
                    "detail": {names.ranks[w]: {"norm": n, "mean": m} for w, n, m in spikes}}))
        if config.loss_spike_factor > 0:
            losses = [row[2] for row in rows if math.isfinite(row[2])]
            loss = sum(losses) / len(losses) if losses else float("nan")
            if math.isfinite(loss):
                if warm and self.loss_mean is not None and loss > config.loss_spike_factor * self.loss_mean:
                    self.pending.append(("sdc_loss_spike", {"step": step, "detail": {"loss": loss, "mean": self.loss_mean}}))
                    skip = skip or config.skip_spikes
                else:
                    self.loss_mean = loss if self.loss_mean is None else (
                        config.spike_ema * self.loss_mean + (1 - config.spike_ema) * loss)
        self.history += 1
        return skip

    def take_events(self) -> list[tuple[str, dict[str, Any]]]:
        """The events found since the last call (settling a gather still in flight first); a quiet-point call."""
        self._settle()
        events, self.pending = self.pending, []
        return events

    def forget_through(self, step: int) -> None:
        """Drop the statistics of steps up to `step` (a checkpoint at `step` makes them unnecessary)."""
        self.rows = {s: r for s, r in self.rows.items() if s > step}

    def at_step(self, step: int) -> None:
        """Restart the count at `step` (after a checkpoint load), dropping anything in flight."""
        if self._in_flight is not None:
            self._in_flight[0]()
            self._in_flight = None
        self._step_index = step


def first_divergence(first: dict[int, torch.Tensor], replay: dict[int, torch.Tensor]) -> tuple[int, list[int]] | None:
    """The first step whose pre-reduction statistics differ, bit for bit, between a run and its replay, and the
    replica positions that differ there; None when every step both have agrees.

    A replay from a verified checkpoint recomputes each step exactly (lagoon's resume is bit-exact), so the
    first difference shows where a transient fault first changed a replica's *own* computation: at that
    step only the faulty replica's local loss and gradients differ; from the next step on the gradient
    reduction has carried the fault to every replica."""
    for step in sorted(set(first) & set(replay)):
        a, b = first[step], replay[step]
        if a.shape != b.shape:
            continue
        differs_W = (a.contiguous().view(torch.int64) != b.contiguous().view(torch.int64)).any(dim=1)
        if bool(differs_W.any()):
            return step, differs_W.nonzero().flatten().tolist()
    return None
