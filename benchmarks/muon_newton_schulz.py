"""Claim: lagoon's batched Muon orthogonalizes a model's matrices ≥ 1.5× faster than torch.optim.Muon.

The same set of matrices — every Muon matrix of a Laguna preset, expert stacks as one 2-D matrix per
expert (gate and up separately), which is the only form torch.optim.Muon accepts — orthogonalized with the
same quintic coefficients, 5 steps, bf16, at the same torch thread count. Timed round-robin in one
process (the order alternating between rounds) after a warm-up call of each side; the figure is the
median of the per-round ratios with their range:

- Newton–Schulz: torch.optim.Muon's per-matrix `_zeropower_via_newtonschulz` in a loop (torch's bf16 GEMM)
  vs lagoon's `orthogonalize_grouped` (matrices of one P×Q shape, tall ones transposed, stacked into one
  batched call per shape; bf16 products computed as `optim.ns_matmul = "auto"` chooses on this machine);
- batching alone: lagoon's `newton_schulz` one matrix at a time vs the batched call, both with the same
  GEMMs — what stacking itself is worth, apart from the choice of GEMM; both sides are also timed with 0
  steps (conversion, normalization and the batched side's stacking copies, no products), which splits each
  side's time into the products and the rest;
- the whole Muon step on those matrices (momentum, orthogonalization, decay, update):
  ``torch.optim.Muon.step`` vs lagoon's `LocalOptimizer.step`.

A profile line per preset gives the rate of one product of its most common shape in torch's bf16 GEMM and
in fp32 (MKL), which is what decides the figure on a CPU without bf16 matrix instructions.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter

import torch
from torch import nn
from torch.optim._muon import _zeropower_via_newtonschulz

from benchmarks.common import interleaved, median, ratios, record, spread, table_row
from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.optim import OptimConfig, group_parameters
from lagoon.optim.grouping import MatrixParam, ParameterGroups
from lagoon.optim.newton_schulz import QUINTIC, newton_schulz, resolve_matmul
from lagoon.optim.optimizer import LocalOptimizer, orthogonalize_grouped

GOAL = 1.5


def matrices_of(preset: str) -> list[torch.Tensor]:
    """Every Muon matrix of `preset` as its own 2-D tensor (per expert, gate and up split)."""
    with torch.device("meta"):
        model = LagunaForCausalLM(preset_config(preset))
    out = []
    for matrix in group_parameters(model).muon:
        out += [torch.randn(matrix.rows, matrix.cols) for _ in range(matrix.count)]
    return out


def gemm_profile(rows: int, cols: int, repeats: int = 5, batch: int = 16) -> str:
    """GFLOP/s of X·Xᵀ (P×Q by Q×P): one product in bf16 (torch's GEMM) and in fp32, and `batch` fp32 products
    as `batch` calls vs one batched call — what a batched call can gain on the GEMMs themselves."""
    P, Q = min(rows, cols), max(rows, cols)
    flops = 2 * P * P * Q

    def rate(fn, count: int) -> float:
        fn()
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        return count * flops / ((time.perf_counter() - started) / repeats) / 1e9

    X = torch.randn(P, Q)
    X_NPQ = torch.randn(batch, P, Q)
    singles = list(X_NPQ.unbind(0))
    bf16 = X.bfloat16()
    rates = {"bf16": rate(lambda: bf16 @ bf16.T, 1), "fp32": rate(lambda: X @ X.T, 1),
             "loop": rate(lambda: [x @ x.T for x in singles], batch), "batched": rate(lambda: X_NPQ @ X_NPQ.mT, batch)}
    # Three significant digits: a GEMM stalled by oversubscription runs at hundredths of a GFLOP/s.
    return (f"{P}×{Q}·{Q}×{P}: bf16 GEMM {rates['bf16']:.3g} GFLOP/s, fp32 GEMM {rates['fp32']:.3g} GFLOP/s "
            f"({rates['fp32'] / rates['bf16']:.3g}×); {batch} fp32 products one call each "
            f"{rates['loop']:.3g} GFLOP/s, as one batched call {rates['batched']:.3g} GFLOP/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each side first")
    parser.add_argument("--parts", nargs="+", default=["ns", "batching", "step"], choices=["ns", "batching", "step"],
                        help="which comparisons to run (torch's bf16 loop takes minutes per call at `small` on a "
                             "CPU without bf16 units)")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="torch thread counts to measure at (each a full run of every side)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    config = OptimConfig(ns_steps=5, ns_coefficients="quintic", ns_dtype="bfloat16", weight_decay=0.1)
    kernel = resolve_matmul(config.ns_matmul, torch.bfloat16, torch.device("cpu"))
    lines = ["| preset | threads | matrices | shapes | what | baseline s | lagoon s | speed-up (per round) |",
             "|---|---|---|---|---|---|---|---|"]
    profiles, summary, fixed = [], {}, {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for preset in args.presets:
            torch.manual_seed(0)
            grads = matrices_of(preset)
            shapes = Counter(tuple(g.shape) for g in grads)
            for shape, _ in shapes.most_common(2):
                profiles.append(f"- `{preset}`, {threads} thread(s), {shapes[shape]} matrices of "
                                f"{shape[0]}×{shape[1]}: {gemm_profile(*shape)}.")
            entries = [(MatrixParam(f"m{i}", None, 1, *g.shape), g) for i, g in enumerate(grads)]  # type: ignore[arg-type]

            def row(what: str, baseline: str, times: dict[str, list[float]]) -> list[float]:
                per_round = ratios(times["baseline"], times["lagoon"])
                lines.append(f"| {preset} | {threads} | {len(grads)} | {len(shapes)} | {what} ({baseline}) | "
                             f"{spread(times['baseline'], '{:.3f}')} | {spread(times['lagoon'], '{:.3f}')} | "
                             f"{spread(per_round, '{:.2f}', '×')} |")
                print(lines[-1], flush=True)
                return per_round

            if "ns" in args.parts:  # Newton–Schulz: torch's per-matrix loop vs lagoon's batched call
                times = interleaved({
                    "baseline": lambda: [_zeropower_via_newtonschulz(g, QUINTIC, 5, 1e-7) for g in grads],
                    "lagoon": lambda: orthogonalize_grouped(entries, config),
                }, rounds=args.rounds, warmup=args.warmup)
                summary[(threads, preset, "ns")] = row("Newton–Schulz", "torch.optim.Muon's loop", times)
            if "batching" in args.parts:  # batching alone: the same GEMMs one matrix at a time
                # With 0 steps both sides do everything but the products (bf16 conversion, normalization and,
                # batched, the stacking and splitting copies): what batching costs outside the GEMMs.
                no_products = dataclasses.replace(config, ns_steps=0)
                times = interleaved({
                    "baseline": lambda: [newton_schulz(g, 5, "quintic", "bfloat16", kernel) for g in grads],
                    "lagoon": lambda: orthogonalize_grouped(entries, config),
                    "baseline_fixed": lambda: [newton_schulz(g, 0, "quintic", "bfloat16", kernel) for g in grads],
                    "lagoon_fixed": lambda: orthogonalize_grouped(entries, no_products),
                }, rounds=args.rounds, warmup=args.warmup)
                summary[(threads, preset, "batching")] = row("batching alone",
                                                             f"lagoon one at a time, {kernel} GEMMs", times)
                fixed[(threads, preset)] = (f"- `{preset}`, {threads} thread(s): outside the products (0 steps) one "
                                            f"at a time {median(times['baseline_fixed']):.3f} s, batched "
                                            f"{median(times['lagoon_fixed']):.3f} s; the products (the difference) one "
                                            f"at a time {median(times['baseline']) - median(times['baseline_fixed']):.3f} s, "
                                            f"batched {median(times['lagoon']) - median(times['lagoon_fixed']):.3f} s.")
            if "step" not in args.parts:
                continue
            # The whole Muon step over the same matrices.
            ours_params = [nn.Parameter(torch.randn(g.shape)) for g in grads]
            torch_params = [nn.Parameter(p.detach().clone()) for p in ours_params]
            for p, q, g in zip(ours_params, torch_params, grads):
                p.grad, q.grad = g.clone(), g.clone()
            groups = ParameterGroups(muon=[MatrixParam(f"m{i}", p, 1, *p.shape) for i, p in enumerate(ours_params)])
            ours_optimizer = LocalOptimizer(groups, config)
            torch_optimizer = torch.optim.Muon(torch_params, lr=config.lr, weight_decay=0.1, momentum=0.95,
                                               nesterov=True, adjust_lr_fn="match_rms_adamw")
            times = interleaved({"baseline": torch_optimizer.step, "lagoon": ours_optimizer.step},
                                rounds=args.rounds, warmup=args.warmup)
            summary[(threads, preset, "step")] = row("Muon step", "torch.optim.Muon.step", times)

    def figure(kind: str) -> str:
        return "; ".join(f"{preset} {spread(values, '{:.2f}', '×')}"
                         + (f" at {t} thread{'s' if t > 1 else ''}" if len(args.threads) > 1 else "")
                         for (t, preset, k), values in summary.items() if k == kind)

    def met(kind: str, goal: float, strictly: bool = False) -> str:
        hits = [median(values) > goal if strictly else median(values) >= goal
                for (t, p, k), values in summary.items() if k == kind]
        return "met" if all(hits) else ("missed" if not any(hits) else f"met for {sum(hits)} of {len(hits)}")

    lines += ["", f"bf16 products on this machine: `ns_matmul = \"auto\"` → {kernel} GEMMs "
                  "(fp32 GEMMs on the bf16 values, each product rounded to bf16, where the CPU has no bf16 matrix "
                  "instructions; torch's bf16 GEMM where it has).", "", "Profile:", *profiles, "",
              *(["Batching alone, split into what is not a product and what is (medians):", *fixed.values(), ""]
                if fixed else []),
              f"Seconds are median (min–max) per call over {args.rounds} rounds after {args.warmup} warm-up call(s); "
              f"speed-ups are baseline ÷ lagoon per round. Goal: ≥ {GOAL}× torch.optim.Muon.", ""]
    if "ns" in args.parts:
        step = f"; Muon step {figure('step')}" if "step" in args.parts else ""
        lines.append(table_row("muon_newton_schulz", f"≥ {GOAL}×", f"Newton–Schulz {figure('ns')}{step}",
                               met("ns", GOAL)))
    if "batching" in args.parts:
        lines.append(table_row("muon_newton_schulz.batching", "> 1× (same GEMMs)",
                               f"{figure('batching')} ({kernel} GEMMs both)", met("batching", 1.0, strictly=True)))
    print("\n".join(lines[lines.index("Profile:") - 2:]))
    if not args.no_record:
        record("Muon Newton–Schulz: lagoon batched vs torch.optim.Muon (issue 4)", lines)


if __name__ == "__main__":
    main()
