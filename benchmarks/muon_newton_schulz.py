"""Claim: lagoon's batched Muon orthogonalizes a model's matrices ≥ 1.5× faster than torch.optim.Muon.

The same set of matrices — every Muon matrix of a Laguna preset, expert stacks as one 2-D matrix per
expert (gate and up separately), which is the only form torch.optim.Muon accepts — orthogonalized with the
same quintic coefficients, 5 steps, bf16. Two figures, timed round-robin in one process:

- Newton–Schulz alone: torch.optim.Muon's per-matrix `_zeropower_via_newtonschulz` in a loop vs lagoon's
  `orthogonalize_grouped` (stack same-shape matrices, one batched call per shape, split back).
- the whole Muon step on those matrices (momentum, orthogonalization, decay, update): ``torch.optim.Muon.step``
  vs lagoon's `LocalOptimizer.step`.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.optim._muon import _zeropower_via_newtonschulz

from benchmarks.common import interleaved, median, record
from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.optim import OptimConfig, group_parameters
from lagoon.optim.grouping import MatrixParam, ParameterGroups
from lagoon.optim.newton_schulz import QUINTIC
from lagoon.optim.optimizer import LocalOptimizer, orthogonalize_grouped


def matrices_of(preset: str) -> list[torch.Tensor]:
    """Every Muon matrix of `preset` as its own 2-D tensor (per expert, gate and up split)."""
    with torch.device("meta"):
        model = LagunaForCausalLM(preset_config(preset))
    out = []
    for matrix in group_parameters(model).muon:
        out += [torch.randn(matrix.rows, matrix.cols) for _ in range(matrix.count)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    config = OptimConfig(ns_steps=5, ns_coefficients="quintic", ns_dtype="bfloat16", weight_decay=0.1)
    lines = ["| preset | matrices | shapes | what | torch.optim.Muon s | lagoon s | speed-up |", "|---|---|---|---|---|---|---|"]
    for preset in args.presets:
        torch.manual_seed(0)
        grads = matrices_of(preset)
        shapes = len({tuple(g.shape) for g in grads})
        # Newton–Schulz alone.
        entries = [(MatrixParam(f"m{i}", None, 1, *g.shape), g) for i, g in enumerate(grads)]  # type: ignore[arg-type]
        times = interleaved({
            "torch": lambda: [_zeropower_via_newtonschulz(g, QUINTIC, 5, 1e-7) for g in grads],
            "lagoon": lambda: orthogonalize_grouped(entries, config),
        }, rounds=args.rounds, warmup=1)
        ours, theirs = median(times["lagoon"]), median(times["torch"])
        lines.append(f"| {preset} | {len(grads)} | {shapes} | Newton–Schulz | {theirs:.3f} | {ours:.3f} | {theirs / ours:.2f}× |")
        print(lines[-1], flush=True)
        # The whole Muon step over the same matrices.
        ours_params = [nn.Parameter(torch.randn(g.shape)) for g in grads]
        torch_params = [nn.Parameter(p.detach().clone()) for p in ours_params]
        for p, q, g in zip(ours_params, torch_params, grads):
            p.grad, q.grad = g.clone(), g.clone()
        groups = ParameterGroups(muon=[MatrixParam(f"m{i}", p, 1, *p.shape) for i, p in enumerate(ours_params)])
        ours_optimizer = LocalOptimizer(groups, config)
        torch_optimizer = torch.optim.Muon(torch_params, lr=config.lr, weight_decay=0.1, momentum=0.95, nesterov=True,
                                           adjust_lr_fn="match_rms_adamw")
        times = interleaved({"torch": torch_optimizer.step, "lagoon": ours_optimizer.step}, rounds=args.rounds, warmup=1)
        ours, theirs = median(times["lagoon"]), median(times["torch"])
        lines.append(f"| {preset} | {len(grads)} | {shapes} | Muon step | {theirs:.3f} | {ours:.3f} | {theirs / ours:.2f}× |")
        print(lines[-1], flush=True)
    if not args.no_record:
        record("Muon Newton–Schulz: lagoon batched vs torch.optim.Muon (issue 4)", [
            "Same matrices (every Muon matrix of the preset, one 2-D matrix per expert), quintic, 5 steps, bf16;",
            "median seconds per call, round-robin.", "", *lines])


if __name__ == "__main__":
    main()
