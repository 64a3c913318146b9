"""Claim: asynchronous RL produces ≥ 1.5× the trajectories per minute of synchronous RL, at equal or better reward.

Both runs are `lagoon rl` on the same config, from the same warmed-up checkpoint, for the same wall-clock
budget (``rl.time_limit_s``); they differ only in the staleness bound η = ``rl.trainer.max_staleness``:

- synchronous: η = 0 — admission control lets actors hold one batch of outstanding groups, so they
  generate, wait while the trainer trains and publishes, then generate with the new weights
  (generate → train → generate);
- asynchronous: η = 2 — actors keep generating while the trainer trains, at most two versions ahead.

The trainer and the inference servers get disjoint cores (``rl.trainer.cpus`` and ``rl.servers.cpus``,
`lagoon.rl.affinity`), as they would hold different GPUs: by default the first core for the trainer and the
rest for the server(s), each role with one torch thread per core. Without that, on a small CPU machine both
roles share the same cores and overlapping them only makes them take turns. Actors, sandboxes and the
orchestrator are not pinned. The runs are sequential (sync first), so the machine must be otherwise idle
for the figure to mean anything; the load is recorded.

Reported per mode: finished episodes per minute (every group, kept or filtered), trainer steps, the mean
episode reward in the last third of the run, and the held-out reward of the final weights. The goal is
met when async's throughput is ≥ 1.5× sync's and its held-out reward is at least sync's minus two
standard errors of the held-out estimate (equal reward within the evaluation's noise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

from benchmarks.common import load, record, table_row
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
    parser.add_argument("--trainer-cpus", type=int, nargs="*", default=None,
                        help="the trainer's cores (default: the first core this process may use)")
    parser.add_argument("--server-cpus", type=int, nargs="*", default=None,
                        help="the servers' cores (default: every other core); pass both empty to leave roles unpinned")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from lagoon.rl import run
    from lagoon.rl.sft import warmup

    out = Path(args.out)
    cores = sorted(os.sched_getaffinity(0))
    trainer_cpus = cores[:1] if args.trainer_cpus is None else args.trainer_cpus
    server_cpus = cores[1:] if args.server_cpus is None else args.server_cpus
    base = load_config(args.config, args.overrides)
    pinning = [f"rl.trainer.cpus={trainer_cpus}", f"rl.servers.cpus={server_cpus}"]
    if server_cpus:
        pinning.append(f"rl.servers.threads={max(1, len(server_cpus) // base.rl.servers.count)}")
    init = warmup(base, out / "warmup", say=print)
    rows = {}
    for mode, staleness in (("sync", 0), ("async", args.async_staleness)):
        run_dir = out / mode
        shutil.rmtree(run_dir, ignore_errors=True)
        # Both runs start from the warm-up's checkpoint as is (no second fine-tune).
        config = load_config(args.config, [*args.overrides, *pinning, f'rl.init_checkpoint="{init}"', "rl.sft.steps=0",
                                           f"rl.trainer.max_staleness={staleness}",
                                           f"rl.time_limit_s={args.minutes * 60}", "rl.total_steps=100000"])
        result = run(config, run_dir)
        rate, late_reward, episodes = episodes_per_minute(run_dir)
        rows[mode] = {"rate": rate, "late": late_reward, "episodes": episodes, "steps": result["version"],
                      "after": result["eval_after"]["reward_mean"], "before": result["eval_before"]["reward_mean"],
                      "held_out": result["eval_after"]["episodes"], "rl_min": result["rl_s"] / 60, "load": load()}
        print(mode, rows[mode], flush=True)
    speedup = rows["async"]["rate"] / rows["sync"]["rate"]
    settings = "".join(f" `--set {o}`" for o in args.overrides)
    lines = [f"`{args.config}`{settings} from one warmed-up checkpoint, {args.minutes:g} min of RL each; sync is η = 0, "
             f"async η = {args.async_staleness}. Trainer on core(s) {trainer_cpus or 'any'}, server(s) on core(s) "
             f"{server_cpus or 'any'} (`rl.trainer.cpus`, `rl.servers.cpus`); actors unpinned. 1-minute load at the "
             f"end of each run: sync {rows['sync']['load']:.1f}, async {rows['async']['load']:.1f}.", "",
             "| mode | episodes / min | trainer steps | episode reward, last third | held-out reward before → after |",
             "|---|---|---|---|---|"]
    for mode, row in rows.items():
        lines.append(f"| {mode} | {row['rate']:.1f} | {row['steps']} | {row['late']:.3f} | "
                     f"{row['before']:.3f} → {row['after']:.3f} |")
    sync = rows["sync"]
    n = sync["held_out"]
    p = min(max(sync["after"], 1 / n), 1 - 1 / n)  # a binomial standard error that is never 0
    standard_error = math.sqrt(p * (1 - p) / n)
    equal = rows["async"]["after"] >= sync["after"] - 2 * standard_error
    met = speedup >= 1.5 and equal
    verdict = "met" if met else "missed"
    lines += ["", f"Async / sync throughput: {speedup:.2f}×; held-out reward after: async {rows['async']['after']:.3f} vs "
                  f"sync {sync['after']:.3f} ({'equal or better' if equal else 'worse'} within 2 standard errors, "
                  f"±{2 * standard_error:.3f}); goal ≥ 1.5× at equal reward: {verdict}. Report with both runs: "
                  f"`lagoon report {out}`.", "",
              table_row("rl_async_vs_sync", "≥ 1.5× at equal reward",
                        f"{speedup:.2f}× ({rows['async']['rate']:.0f} vs {sync['rate']:.0f} episodes/min; held-out "
                        f"{rows['async']['after']:.2f} vs {sync['after']:.2f}); trainer core(s) {trainer_cpus}, "
                        f"server core(s) {server_cpus}", verdict)]
    print("\n".join(lines))
    if not args.no_record:
        record("RL: asynchronous vs synchronous", lines)


if __name__ == "__main__":
    main()
