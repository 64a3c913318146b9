"""Claim: asynchronous RL produces ≥ 1.5× the trajectories per minute of synchronous RL, at equal or better reward.

Both runs are `lagoon rl` on the same config, from the same warmed-up checkpoint, for the same wall-clock
budget (``rl.time_limit_s``); they differ only in the staleness bound η = ``rl.trainer.max_staleness``:

- synchronous: η = 0 — admission control lets actors hold one batch of outstanding groups, so they
  generate, wait while the trainer trains and publishes, then generate with the new weights
  (generate → train → generate);
- asynchronous: η = 2 — actors keep generating while the trainer trains, at most two versions ahead.

Reported per mode: finished episodes per minute (every group, kept or filtered), trainer steps, the mean
episode reward in the last third of the run, and the held-out reward of the final weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from benchmarks.common import record
from lagoon.config import load_config
from lagoon.train.metrics import read_jsonl


def episodes_per_minute(run_dir: Path) -> tuple[float, float, int]:
    """(episodes per minute over the RL phase, mean reward of the last third of the groups, episodes)."""
    groups = []
    for path in (run_dir / "actors").glob("*.jsonl"):
        groups += [r for r in read_jsonl(path) if r.get("type") == "group"]
    groups.sort(key=lambda r: r["time"])
    result = json.loads((run_dir / "result.json").read_text())
    episodes = sum(len(g["rewards"]) for g in groups)
    tail = groups[len(groups) * 2 // 3:]
    late = [r for g in tail for r in g["rewards"]]
    return episodes / (result["rl_s"] / 60), sum(late) / max(len(late), 1), episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/rl_demo.toml")
    parser.add_argument("--out", default="runs/bench_rl_async_vs_sync")
    parser.add_argument("--minutes", type=float, default=5.0, help="RL wall-clock budget of each run")
    parser.add_argument("--async-staleness", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both runs, e.g. rl.init_checkpoint='\"runs/demo/hf\"' with "
                             "configs/demo.toml: the main job's recipe (the warm-up then fine-tunes that export)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from lagoon.rl import run
    from lagoon.rl.sft import warmup

    out = Path(args.out)
    base = load_config(args.config, args.overrides)
    init = warmup(base, out / "warmup", say=print)
    rows = {}
    for mode, staleness in (("sync", 0), ("async", args.async_staleness)):
        run_dir = out / mode
        shutil.rmtree(run_dir, ignore_errors=True)
        # Both runs start from the warm-up's checkpoint as is (no second fine-tune).
        config = load_config(args.config, [*args.overrides, f'rl.init_checkpoint="{init}"', "rl.sft.steps=0",
                                           f"rl.trainer.max_staleness={staleness}",
                                           f"rl.time_limit_s={args.minutes * 60}", "rl.total_steps=100000"])
        result = run(config, run_dir)
        rate, late_reward, episodes = episodes_per_minute(run_dir)
        rows[mode] = {"rate": rate, "late": late_reward, "episodes": episodes, "steps": result["version"],
                      "after": result["eval_after"]["reward_mean"], "before": result["eval_before"]["reward_mean"]}
        print(mode, rows[mode], flush=True)
    speedup = rows["async"]["rate"] / rows["sync"]["rate"]
    settings = "".join(f" `--set {o}`" for o in args.overrides)
    lines = [f"`{args.config}`{settings} from one warmed-up checkpoint, {args.minutes:g} min of RL each; sync is η = 0, "
             f"async η = {args.async_staleness}. Load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
             "at the end (a shared machine).", "",
             "| mode | episodes / min | trainer steps | episode reward, last third | held-out reward before → after |",
             "|---|---|---|---|---|"]
    for mode, row in rows.items():
        lines.append(f"| {mode} | {row['rate']:.1f} | {row['steps']} | {row['late']:.3f} | "
                     f"{row['before']:.3f} → {row['after']:.3f} |")
    met = speedup >= 1.5 and rows["async"]["after"] >= rows["sync"]["after"]
    lines += ["", f"Async / sync throughput: {speedup:.2f}×; goal ≥ 1.5× at equal or better held-out reward: "
                  f"{'met' if met else 'not met'}. Report with both runs: `lagoon report {out}`."]
    print("\n".join(lines))
    if not args.no_record:
        record("RL: asynchronous vs synchronous", lines)


if __name__ == "__main__":
    main()
