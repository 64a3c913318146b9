"""Claim (Poolside): Muon's learning rates transferred across scales.

Does the best Muon learning rate found on `tiny` stay best on a wider model under spectral scaling
(``optim.muon_scaling = "spectral"``: each matrix's orthogonalized update scaled by √(fan_out/fan_in);
Bernstein & Newhouse 2024, "Modular Duality in Deep Learning"; Yang et al. 2023, "A Spectral Condition for
Feature Learning")? And the same question for AdamW (standard parametrization, one rate for every
parameter), where the best rate is expected to fall with width (Yang et al. 2022, "Tensor Programs V", §1).

Both optimizers sweep the same grid shape at two widths — `tiny` (d = 128) and the same model with every
width doubled (``--wide d256``: head width 64, MLP and expert widths ×2) or ×1.5 (``--wide d192``); the
`small` preset (d = 512, 8 layers) takes ~5 s per step on these 2 CPU cores, too slow for a sweep. Figures: the best rate at each width, and
the *transfer regret* — how much worse the wide model ends when trained at tiny's best rate instead of
its own (held-out bits per byte, mean of the capability groups). In Muon's runs the AdamW group
(embeddings, LM head, norms, router) keeps one fixed rate, so only the Muon rate moves.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.common import record
from benchmarks.muon_vs_adamw import ensure_shards

WIDE = {"d256": {"hidden_size": 256, "head_dim": 64, "intermediate_size": 768, "moe_intermediate_size": 256,
                 "shared_expert_intermediate_size": 256},
        "d192": {"hidden_size": 192, "head_dim": 48, "intermediate_size": 576, "moe_intermediate_size": 192,
                 "shared_expert_intermediate_size": 192}}


def run_config(args, width: str, optimizer: str, lr: float) -> dict[str, Any]:
    optim = ({"name": "muon", "lr": lr, "adamw_lr": args.muon_adamw_lr, "muon_scaling": "spectral"}
             if optimizer == "muon" else {"name": "adamw", "lr": lr, "adamw_lr": lr})
    return {
        "model": {"preset": "tiny", **({} if width == "d128" else WIDE[width])},
        "data": {"shards": args.shards, "seq_len": args.seq_len, "global_batch_size": args.batch, "seed": 0},
        "optim": {**optim, "weight_decay": 0.1},
        "train": {"steps": args.steps, "schedule": "wsd", "warmup_fraction": 0.05, "decay_fraction": 0.2,
                  "eval_every": args.steps, "eval_tokens": args.eval_tokens, "checkpoint_every": 0, "keep_last": 1,
                  "num_threads": 1, "progress": False, "max_grad_norm": 1.0, "seed": 0},
        "sdc": {"enabled": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--muon-lrs", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.04])
    parser.add_argument("--adamw-lrs", type=float, nargs="+", default=[0.001, 0.002, 0.004, 0.008])
    parser.add_argument("--muon-adamw-lr", type=float, default=0.004, help="Muon runs' AdamW-group rate (fixed)")
    parser.add_argument("--wide", choices=sorted(WIDE), default="d256", help="the wider model's width")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", default="runs/demo/data")
    parser.add_argument("--out", default="runs/bench/lr_transfer")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from lagoon.report import build_report
    from lagoon.train.sweep import run_sweep, validation_curve

    ensure_shards(args.shards)
    widths = ["d128", args.wide]
    grids = {"muon": sorted(args.muon_lrs), "adamw": sorted(args.adamw_lrs)}
    names = {(width, opt, lr): f"{width}_{opt}_lr{lr:g}/seed0" for width in widths for opt, grid in grids.items()
             for lr in grid}
    # Wide runs first: they are the long ones, so the pool ends with short runs and both workers stay busy.
    order = sorted(names, key=lambda key: key[0] == "d128")
    run_sweep({names[key]: run_config(args, *key) for key in order}, args.out, workers=args.workers)
    final = {key: validation_curve(Path(args.out) / name)[-1][1] for key, name in names.items()}

    lines = [
        f"Embedded corpus, {args.steps} steps of {args.batch} × {args.seq_len} tokens, warmup-stable-decay, one seed; "
        f"`tiny` (d=128) vs the same model with every width ×{int(args.wide[1:]) / 128:g} ({args.wide}). Final held-out "
        f"bits per byte (mean of 4 groups).",
        "",
    ]
    verdicts = []
    for opt, grid in grids.items():
        label = "Muon (spectral scaling)" if opt == "muon" else "AdamW"
        lines += [f"| {label} | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | best |",
                  "|---|" + "---|" * (len(grid) + 1)]
        best = {}
        for width in widths:
            values = {lr: final[(width, opt, lr)] for lr in grid}
            best[width] = min(values, key=values.get)
            lines.append(f"| {width} | " + " | ".join(f"{values[lr]:.4f}" for lr in grid) + f" | {best[width]:g} |")
        lines.append("")
        wide = args.wide
        regret = final[(wide, opt, best["d128"])] - final[(wide, opt, best[wide])]
        edge = any(best[w] in (grid[0], grid[-1]) for w in widths)
        verdicts.append(f"- {label}: best rate {best['d128']:g} at d=128, {best[wide]:g} at {wide} — "
                        f"{'transfers' if best['d128'] == best[wide] else 'does not transfer exactly'}; "
                        f"transfer regret at {wide}: {regret:+.4f} bpb"
                        + (" (a best rate sits at the grid's edge: widen the grid)" if edge else "") + ".")
    lines += verdicts
    page = build_report(args.out, Path(args.out) / "report.html", title=f"Learning-rate transfer, d128 → {args.wide}")
    lines.append(f"- Loss curves of every run: `{page}`.")
    print("\n".join(lines))
    if not args.no_record:
        record("Learning-rate transfer across width, Muon (spectral) vs AdamW (issue 4)", lines)


if __name__ == "__main__":
    main()
