"""Claim: RL improves the policy beyond what the same training compute spent on more SFT would.

Per seed, from one starting checkpoint S (the config's supervised warm-up: `configs/rl_demo.toml` trains a
tiny policy from scratch; `--config configs/demo.toml --set rl.init_checkpoint='"runs/demo/hf"'` is the main
job's recipe, a short SFT of the pretrained export), two arms:

- RL: `lagoon rl` from S (asynchronous CISPO, the config's settings) for `--minutes` of RL;
- SFT only, compute-matched: more supervised fine-tuning from S (`lagoon.rl.sft.warmup` with
  ``rl.init_checkpoint = S``, the config's learning rate and batch, fresh transcripts of the same level
  from another seed) for as many steps as it takes to forward and backward at least as many tokens as the
  RL trainer did (the RL trainer's padded micro-batch tokens, summed over its steps; the model is the
  same, so trainer FLOPs are proportional to tokens). RL's generation compute on the inference servers
  comes on top and is not charged to it — the comparison favours RL by that much.

S and both results are evaluated with the production harness on held-out arith-code tasks (a seed no
step trained on, one episode per task, temperature of ``[rl.eval]``) at two levels: the training level
(in distribution) and `--other-levels`, which the SFT transcripts never show: by default the harder level 3
(docs/LOG.md: 100 SFT steps learn level 2's template and score 0 on levels 3 and 4) and the simpler level 1
(two operands instead of three: a policy that learnt arithmetic by code rather than one template solves
it too). The seed moves the warm-up's data order (and
initialization from scratch), the task order, the trainer and the SFT arm's transcripts.

Reported: every seed's nine scores (three checkpoints × three levels), then per level the mean and min–max
over seeds of each arm, and RL − SFT-only with two standard errors of the pooled held-out mean: "RL ahead"
or "SFT-only ahead" only outside that band, "tie" inside it. `--steps` fixes the amount of RL (the same
RL whatever the machine's load); `--minutes` caps it by wall clock instead.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from benchmarks.common import record, table_row
from lagoon.config import load_config


def rl_trainer_tokens(run_dir: Path) -> tuple[int, int]:
    """(padded tokens the RL trainer forwarded and backwarded, its steps), from its metrics."""
    from lagoon.train.metrics import read_jsonl

    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "tokens_per_s" in r and "train_s" in r]
    return round(sum(r["tokens_per_s"] * r["train_s"] for r in rows)), len(rows)


def sft_steps_for(config, tokens: int) -> tuple[int, int]:
    """(steps, padded tokens) of `lagoon.rl.sft.warmup` under `config` needed to reach `tokens`: its batches
    drawn exactly as the warm-up draws them (seeded `torch.randint`, right-padded to the longest)."""
    import torch

    from lagoon.infer.tokenizer import Tokenizer
    from lagoon.rl.sft import _transcripts, task_level

    sft = config.rl.sft
    tokenizer = Tokenizer.from_dir(Path(config.rl.tokenizer or config.rl.init_checkpoint))
    lengths = [len(e["input_ids"]) for e in _transcripts(task_level(config), sft.num_examples, sft.seed, tokenizer)]
    generator = torch.Generator().manual_seed(sft.seed)
    total, steps = 0, 0
    while steps == 0 or total < tokens:
        picked = torch.randint(len(lengths), (sft.batch_size,), generator=generator).tolist()
        total += sft.batch_size * max(lengths[i] for i in picked)
        steps += 1
    return steps, total


def evaluate(config, checkpoint: Path, level: int, cache: Path) -> dict:
    """Held-out reward of `checkpoint` on arith-code tasks of `level` (cached in `cache`, so a rerun resumes)."""
    from lagoon.configio import from_dict, to_dict
    from lagoon.config import LagoonConfig
    from lagoon.rl.evaluate import evaluate_checkpoint

    if cache.is_file():
        return json.loads(cache.read_text())
    data = to_dict(config)
    data["rl"]["tasks"]["task_set"] = f"arith-code:level={level}"
    result = evaluate_checkpoint(from_dict(LagoonConfig, data), checkpoint)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


def standard_error(rewards: list[float], episodes: int) -> float:
    """Binomial standard error of a held-out mean over `episodes` (clipped so it is never 0)."""
    p = min(max(statistics.mean(rewards), 1 / episodes), 1 - 1 / episodes)
    return math.sqrt(p * (1 - p) / episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/rl_demo.toml")
    parser.add_argument("--out", default="runs/bench_rl_heldout")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=4.0, help="RL wall-clock budget per seed (0: the config's)")
    parser.add_argument("--steps", type=int, default=0,
                        help="RL trainer steps per seed instead of a time budget (the same RL whatever the load)")
    parser.add_argument("--other-levels", type=int, nargs="+", default=[3, 1],
                        help="arith-code levels the SFT transcripts never show (the first is the harder one)")
    parser.add_argument("--eval-tasks", type=int, default=128, help="held-out tasks per evaluation")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. rl.init_checkpoint='\"runs/demo/hf\"' to start "
                             "from the main job's pretrained export with configs/demo.toml")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from lagoon.rl import run
    from lagoon.rl.sft import task_level, warmup
    from lagoon.weights.publish import read_latest, store_root

    rows = []
    for seed in args.seeds:
        out = Path(args.out) / f"seed{seed}"
        common = [*args.overrides, f"rl.eval.num_tasks={args.eval_tasks}"]
        config = load_config(args.config, [*common, f"rl.sft.seed={seed + 1}", f"rl.tasks.seed={seed}",
                                           f"rl.trainer.seed={seed}"])
        level = task_level(config)
        start = warmup(config, out / "start", say=print)  # S: the config's warm-up
        rl_settings = [*common, f'rl.init_checkpoint="{start}"', "rl.sft.steps=0", f"rl.tasks.seed={seed}",
                       f"rl.trainer.seed={seed}"]
        if args.steps:
            rl_settings += [f"rl.total_steps={args.steps}", "rl.time_limit_s=0"]
        elif args.minutes:
            rl_settings += [f"rl.time_limit_s={args.minutes * 60}", "rl.total_steps=100000"]
        rl_config = load_config(args.config, rl_settings)
        result = run(rl_config, out / "rl")
        latest = read_latest(store_root(rl_config.rl.weights, out / "rl"))
        rl_final = Path(latest["path"]) if latest and latest["version"] > 0 else start
        tokens, rl_steps = rl_trainer_tokens(out / "rl")
        # The SFT-only arm: more of the warm-up's own recipe from S, on fresh transcripts, compute-matched.
        sft_config = load_config(args.config, [*common, f'rl.init_checkpoint="{start}"',
                                               f"rl.sft.seed={1000 + seed}", "rl.sft.steps=1"])
        sft_steps, sft_tokens = sft_steps_for(sft_config, tokens)
        sft_config = load_config(args.config, [*common, f'rl.init_checkpoint="{start}"',
                                               f"rl.sft.seed={1000 + seed}", f"rl.sft.steps={sft_steps}"])
        sft_final = warmup(sft_config, out / "sft_only", say=print)
        scores = {}
        for arm, checkpoint in (("start", start), ("rl", rl_final), ("sft", sft_final)):
            for which, lvl in (("in", level), *((f"L{other}", other) for other in args.other_levels)):
                cached = out / "eval" / f"{arm}_level{lvl}.json"
                if arm == "start" and which == "in":
                    scores[(arm, which)] = result["eval_before"]["reward_mean"]
                elif arm == "rl" and which == "in":
                    scores[(arm, which)] = result["eval_after"]["reward_mean"]
                else:
                    scores[(arm, which)] = evaluate(rl_config, checkpoint, lvl, cached)["reward_mean"]
        rows.append({"seed": seed, "scores": scores, "rl_tokens": tokens, "rl_steps": rl_steps, "sft_steps": sft_steps,
                     "sft_tokens": sft_tokens, "rl_minutes": result["rl_s"] / 60})
        print(json.dumps({**rows[-1], "scores": {f"{a}/{w}": v for (a, w), v in scores.items()}}), flush=True)

    kinds = [("in", level), *((f"L{other}", other) for other in args.other_levels)]
    cap = (f", {args.steps} RL steps" if args.steps else f", RL capped at {args.minutes:g} min" if args.minutes
           else "")
    settings = "".join(f" `--set {o}`" for o in args.overrides)
    others = " and ".join(f"level {other}" for other in args.other_levels)
    lines = [f"`{args.config}`{settings}{cap}; {args.eval_tasks} held-out arith-code tasks per evaluation (a seed "
             f"disjoint from training, one episode each) at level {level} (the training level) and {others} "
             f"(never in the SFT transcripts).", "",
             "| seed | " + " | ".join(f"start L{lvl} | RL L{lvl} | SFT-only L{lvl}" for _, lvl in kinds)
             + " | RL trainer tokens (steps) | SFT-only tokens (steps) | RL minutes |",
             "|---|" + "---|---|---|" * len(kinds) + "---|---|---|"]
    for row in rows:
        s = row["scores"]
        cells = " | ".join(f"{s[('start', k)]:.3f} | {s[('rl', k)]:.3f} | {s[('sft', k)]:.3f}" for k, _ in kinds)
        lines.append(f"| {row['seed']} | {cells} | {row['rl_tokens']:,} ({row['rl_steps']}) | "
                     f"{row['sft_tokens']:,} ({row['sft_steps']}) | {row['rl_minutes']:.1f} |")

    def mean(arm: str, which: str) -> float:
        return statistics.mean(r["scores"][(arm, which)] for r in rows)

    def mean_range(arm: str, which: str) -> str:
        """Mean over seeds with the seeds' min–max (the spread the issue asks for)."""
        values = [r["scores"][(arm, which)] for r in rows]
        return f"{statistics.mean(values):.2f}" + (f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else "")

    def verdict(which: str) -> str:
        gap = mean("rl", which) - mean("sft", which)
        noise = 2 * standard_error([r["scores"][("sft", which)] for r in rows], args.eval_tasks * len(rows))
        wins = sum(r["scores"][("rl", which)] > r["scores"][("sft", which)] for r in rows)
        lead = "RL ahead" if gap > noise else "SFT-only ahead" if gap < -noise else "tie"
        return f"{lead} ({gap:+.3f}, ±{noise:.3f}; RL higher in {wins} of {len(rows)} seeds)"

    summary = "; ".join(f"L{lvl}{' (training level)' if k == 'in' else ''}: start {mean_range('start', k)} → RL "
                        f"{mean_range('rl', k)} vs SFT-only {mean_range('sft', k)}" for k, lvl in kinds) \
        + f" (mean (min–max) over {len(rows)} seed{'s' if len(rows) > 1 else ''}, `{Path(args.config).name}`{cap})"
    lines += ["", f"Held-out reward, {summary}.",
              "RL − SFT-only: " + "; ".join(f"level {lvl} {verdict(k)}" for k, lvl in kinds)
              + ". ± is two standard errors of the pooled held-out mean.", "",
              table_row("rl_heldout.vs_sft", "RL ≥ compute-matched SFT", summary,
                        ", ".join(f"L{lvl} {verdict(k).split(' (')[0]}" for k, lvl in kinds))]
    print("\n".join(lines))
    if not args.no_record:
        record("RL vs compute-matched SFT: held-out reward in distribution and on other levels (issue 21)", lines)


if __name__ == "__main__":
    main()
