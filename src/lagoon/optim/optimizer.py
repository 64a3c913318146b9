"""The optimizer object the training loop drives, and its single-process (or DDP-replicated) form.

Both this `LocalOptimizer` and `lagoon.optim.distributed.DistributedMuon` share `LagoonOptimizer`'s
contract: ``step(max_grad_norm)`` → metrics, ``zero_grad()``, ``set_lr_scale(scale)``, a world-size
independent ``state_dict()``, ``reduces_gradients`` and ``param_groups``.

Learning rate and weight decay: the schedule sets a scale s_t; each group's rate is η_t = s_t·(base LR).
Weight decay is decoupled and uses η_t — the *base* rate in the sense of Liu et al. 2025 (§2.1, eq. 3)
and torch.optim.Muon: not multiplied by Muon's per-matrix update scale (0.2·√max(A, B) or
√(fan_out/fan_in)), but following the schedule like the step itself (θ ← θ·(1 − η_t·λ) − η_t·scale·O), as
in AdamW (Loshchilov & Hutter 2019, Alg. 2, where the schedule multiplier η_t scales both terms).

Shape legend: N matrices stacked for one batched Newton–Schulz call, R×C one matrix (fan_out × fan_in).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from lagoon.errors import LagoonError
from lagoon.optim.config import OptimConfig
from lagoon.optim.functional import adamw_update, apply_muon_update, clip_coefficient, muon_direction, muon_scale
from lagoon.optim.grouping import MatrixParam, ParameterGroups
from lagoon.optim.newton_schulz import DTYPES, newton_schulz

STATE_FORMAT = "lagoon.optim/1"


class LagoonOptimizer:
    """What every lagoon optimizer offers the training loop."""

    reduces_gradients: bool = False
    """True when the optimizer reduces gradients across data-parallel ranks itself (do not wrap in DDP)."""

    def __init__(self, groups: ParameterGroups, config: OptimConfig):
        self.groups = groups
        self.config = config
        self.lr_scale = 1.0
        self.step_count = 0

    # ---------------------------------------------------------------------------------------------
    def set_lr_scale(self, scale: float) -> None:
        """Multiply every group's base learning rate by `scale` from the next step on."""
        assert math.isfinite(scale) and scale >= 0, f"learning-rate scale must be finite and >= 0, got {scale}"
        self.lr_scale = float(scale)

    @property
    def muon_lr(self) -> float:
        return self.config.lr * self.lr_scale

    @property
    def adamw_lr(self) -> float:
        return self.config.adamw_lr * self.lr_scale

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """One entry per group: name, current and base LR, weight decay, tensor and element counts."""
        rows = []
        for name, params, lr, base, decay in (
            ("muon", [m.param for m in self.groups.muon], self.muon_lr, self.config.lr, self.config.weight_decay),
            ("adamw", [p for _, p in self.groups.adamw], self.adamw_lr, self.config.adamw_lr, self.config.weight_decay),
            ("adamw_no_decay", [p for _, p in self.groups.adamw_no_decay], self.adamw_lr, self.config.adamw_lr, 0.0),
        ):
            if params:
                rows.append({"name": name, "lr": lr, "base_lr": base, "weight_decay": decay,
                             "tensors": len(params), "elements": sum(p.numel() for p in params)})
        return rows

    def trainable(self) -> list[nn.Parameter]:
        return ([m.param for m in self.groups.muon] + [p for _, p in self.groups.adamw]
                + [p for _, p in self.groups.adamw_no_decay])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.trainable():
            if param.grad is None:
                continue
            if set_to_none:
                param.grad = None
            else:
                param.grad.detach_().zero_()

    def step(self, max_grad_norm: float | None = None) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------
    def _metrics(self, grad_norm: float, coefficient: float) -> dict[str, float]:
        metrics = {"grad_norm": grad_norm, "clip_coef": coefficient, "adamw_lr": self.adamw_lr}
        metrics["lr"] = self.muon_lr if self.config.name == "muon" else self.adamw_lr
        if not math.isfinite(grad_norm):
            metrics["skipped"] = 1.0
        return metrics

    def _check_state(self, state: dict[str, Any]) -> None:
        """Refuse a state dict of another format, optimizer or set of parameters, with one clear line."""
        if state.get("format") != STATE_FORMAT:
            raise LagoonError(f"optimizer state has format {state.get('format')!r}, expected {STATE_FORMAT!r}")
        if state.get("optimizer") != self.config.name:
            raise LagoonError(f"optimizer state is for {state.get('optimizer')!r} but optim.name is {self.config.name!r}")
        expected = {"muon": {m.name: m.param.shape for m in self.groups.muon},
                    "adamw": {n: p.shape for n, p in self.groups.adamw + self.groups.adamw_no_decay}}
        for section, shapes in expected.items():
            saved = state.get(section, {})
            missing, unexpected = sorted(set(shapes) - set(saved)), sorted(set(saved) - set(shapes))
            if missing or unexpected:
                raise LagoonError(f"optimizer state's {section} group does not match the model: "
                                  f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
                                  f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}")
            for name, shape in shapes.items():
                for key, tensor in saved[name].items():
                    if tuple(tensor.shape) != tuple(shape):
                        raise LagoonError(f"optimizer state {section}.{name}.{key} has shape {tuple(tensor.shape)}, "
                                          f"the parameter has {tuple(shape)}")


def _grad_or_zeros(param: torch.Tensor) -> torch.Tensor:
    """A missing gradient counts as zero, so every parameter decays and keeps its momentum moving."""
    return param.grad if param.grad is not None else torch.zeros_like(param)


def orthogonalize_grouped(directions: list[tuple[MatrixParam, torch.Tensor]], config: OptimConfig) -> list[torch.Tensor]:
    """Newton–Schulz for every matrix, one batched call per distinct P×Q shape; returns one tensor per entry.

    A tall R×C matrix is orthogonalized as its C×R transpose (as `newton_schulz` does inside), so R×C and
    C×R matrices — an MoE layer's gate/up and down experts — share one batched call.
    """
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, (matrix, _) in enumerate(directions):
        rows, cols = matrix.shape
        by_shape[(min(rows, cols), max(rows, cols))].append(index)
    results: list[torch.Tensor | None] = [None] * len(directions)
    for (short, long), indices in by_shape.items():
        pieces = []
        for i in indices:
            matrix, direction = directions[i]
            piece_NRC = direction.reshape(matrix.count, *matrix.shape)
            pieces.append(piece_NRC.mT if matrix.rows > matrix.cols else piece_NRC)
        if len(pieces) == 1:
            stacked_NPQ = pieces[0]
        else:  # concatenate straight into the Newton–Schulz dtype: one copy instead of two
            total = sum(piece.shape[0] for piece in pieces)
            stacked_NPQ = torch.empty((total, short, long), dtype=DTYPES[config.ns_dtype], device=pieces[0].device)
            torch.cat(pieces, out=stacked_NPQ)
        ortho_NPQ = newton_schulz(stacked_NPQ, config.ns_steps, config.ns_coefficients, config.ns_dtype,
                                  config.ns_matmul)
        for i, piece in zip(indices, ortho_NPQ.split([directions[i][0].count for i in indices])):
            results[i] = piece.mT if directions[i][0].rows > directions[i][0].cols else piece
    return results  # type: ignore[return-value]


class LocalOptimizer(LagoonOptimizer):
    """Muon + AdamW in one process: each rank (if any) holds and updates everything.

    Under DDP (``optim.distributed = "none"`` with several ranks) every rank orthogonalizes every matrix —
    the replicated baseline that distributed Muon is measured against.
    """

    def __init__(self, groups: ParameterGroups, config: OptimConfig):
        super().__init__(groups, config)
        # One state tensor per Muon parameter (its momentum); two per AdamW parameter.
        self.momentum = {m.name: torch.zeros_like(m.param) for m in groups.muon}
        self.exp_avg = {n: torch.zeros_like(p) for n, p in groups.adamw + groups.adamw_no_decay}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in groups.adamw + groups.adamw_no_decay}

    @torch.no_grad()
    def step(self, max_grad_norm: float | None = None) -> dict[str, float]:
        params = self.trainable()
        grads = [_grad_or_zeros(p) for p in params]
        # The arithmetic of torch.nn.utils.clip_grad_norm_: ‖(‖g_i‖)_i‖₂.
        norms = torch._foreach_norm(grads, 2.0)
        grad_norm = float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2.0)) if norms else 0.0
        coefficient = clip_coefficient(grad_norm, max_grad_norm)
        metrics = self._metrics(grad_norm, coefficient)
        if not math.isfinite(grad_norm):
            return metrics  # a non-finite gradient leaves parameters and state untouched
        if coefficient < 1.0:
            torch._foreach_mul_(grads, coefficient)
        self.step_count += 1
        grad_of = {id(p): g for p, g in zip(params, grads)}

        config = self.config
        directions = [(m, muon_direction(grad_of[id(m.param)], self.momentum[m.name], config.momentum, config.nesterov))
                      for m in self.groups.muon]
        for (matrix, _), update in zip(directions, orthogonalize_grouped(directions, config)):
            apply_muon_update(matrix.param, update, lr=self.muon_lr, weight_decay=config.weight_decay,
                              scale=muon_scale(matrix.rows, matrix.cols, config.muon_scaling))

        for members, decay in ((self.groups.adamw, config.weight_decay), (self.groups.adamw_no_decay, 0.0)):
            adamw_update([p for _, p in members], [grad_of[id(p)] for _, p in members],
                         [self.exp_avg[n] for n, _ in members], [self.exp_avg_sq[n] for n, _ in members],
                         step=self.step_count, lr=self.adamw_lr, betas=tuple(config.adamw_betas),
                         eps=config.adamw_eps, weight_decay=decay)
        return metrics

    # ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """World-size independent: full tensors keyed by parameter name (they alias the live state)."""
        return {
            "format": STATE_FORMAT,
            "optimizer": self.config.name,
            "step": self.step_count,
            "muon": {name: {"momentum": t} for name, t in self.momentum.items()},
            "adamw": {name: {"exp_avg": self.exp_avg[name], "exp_avg_sq": self.exp_avg_sq[name]}
                      for name in self.exp_avg},
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.step_count = int(state["step"])
        for name, entry in state["muon"].items():
            self.momentum[name].copy_(entry["momentum"])
        for name, entry in state["adamw"].items():
            self.exp_avg[name].copy_(entry["exp_avg"])
            self.exp_avg_sq[name].copy_(entry["exp_avg_sq"])
