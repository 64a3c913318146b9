"""Claim: RL raises the held-out reward of the demo policy, for every seed.

The whole RL pipeline (`lagoon rl configs/rl_demo.toml`: warm-up from scratch, then asynchronous RL; or
`--config configs/demo.toml --set rl.init_checkpoint='"runs/demo/hf"'`: the main job's RL stage, a short SFT of
the pretrained export, then RL) once per seed — the seed moves the warm-up's data order (and initialization
from scratch), the task order and the trainer — and the held-out
reward (the production harness on arith-code tasks of a seed no step trained on) of the warmed-up policy
before RL and of the final weights after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from benchmarks.common import record
from lagoon.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/rl_demo.toml")
    parser.add_argument("--out", default="runs/bench_rl_heldout")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=0.0, help="cap each run's RL phase (0: the config's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. rl.init_checkpoint='\"runs/demo/hf\"' to start "
                             "from the main job's pretrained export with configs/demo.toml")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from lagoon.rl import run

    rows = []
    for seed in args.seeds:
        overrides = [*args.overrides, f"rl.sft.seed={seed + 1}", f"rl.tasks.seed={seed}", f"rl.trainer.seed={seed}"]
        if args.minutes:
            overrides.append(f"rl.time_limit_s={args.minutes * 60}")
        config = load_config(args.config, overrides)
        result = run(config, Path(args.out) / f"seed{seed}")
        before, after = result["eval_before"], result["eval_after"]
        rows.append((seed, before["reward_mean"], after["reward_mean"], after["episodes"], result["wall_s"],
                     result["version"]))
        print(json.dumps(rows[-1]), flush=True)
    cap = f", RL capped at {args.minutes:g} min" if args.minutes else ""
    settings = "".join(f" `--set {o}`" for o in args.overrides)
    lines = [f"`{args.config}`{settings}{cap}; held-out arith-code tasks (seed disjoint from training), one episode each; "
             f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end.", "",
             "| seed | held-out reward before RL | after RL | change | episodes | steps | wall-clock (min) |",
             "|---|---|---|---|---|---|---|"]
    for seed, before, after, episodes, wall, steps in rows:
        lines.append(f"| {seed} | {before:.3f} | {after:.3f} | {after - before:+.3f} | {episodes} | {steps} | {wall / 60:.1f} |")
    gains = [after - before for _, before, after, *_ in rows]
    lines += ["", f"Mean change {statistics.mean(gains):+.3f} over {len(rows)} seeds "
                  f"(min {min(gains):+.3f}, max {max(gains):+.3f})."]
    print("\n".join(lines))
    if not args.no_record:
        record("RL: held-out reward before and after", lines)


if __name__ == "__main__":
    main()
