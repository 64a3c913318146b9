"""The training engine with expert parallelism against the engine's FSDP2 layout without it, at W = 4.

Method: the demo's pretraining config (configs/demo.toml: the tiny Laguna, 8 routed experts top-2, seq 256 × 16
sequences per step, distributed Muon, SDC checks) runs `lagoon train` under torchrun on 4 gloo ranks (one
thread each) for --steps steps without evaluation or checkpoints, once per arm per round, the arms interleaved
round by round (their order rotating) so machine load hits them alike:

    fsdp    parallel.dp_shard = 4, ep = 1: every parameter FSDP2-sharded; each block gathers all 8 experts
    ep4     parallel.dp_shard = 4, ep = 4: 2 whole experts per rank, tokens sent to them by all-to-all
    ep2     parallel.dp_shard = 4, ep = 2: 4 experts per EP rank, FSDP2-sharded over the other 2 ranks

A run's step time is the median over its steps after the first 3 (warm-up) of step tokens / tokens_per_s; each
arm reports the median over rounds, the spread (min-max) and the ratio to ``fsdp``. Memory per rank, from the
runs themselves: the parameter + gradient + optimizer bytes and the routed experts' share of the parameters that
the trainer measures at its first step (`state_bytes/*`: what a rank holds at rest), and the peak resident set
of the largest rank process (getrusage of a wrapper that waits for torchrun, which waits for its ranks) — at
this size mostly the Python and torch runtime, so it shows only that EP adds no buffers of note. The experts a
block gathers for compute (E/ep under EP, all E without) are measured in tests/parallel/test_expert.py.
Also the busiest EP rank's load (`ep_max_load`, median over steps). The arms' losses agree
(tests/train/test_engine_expert_parallel.py). README's table row `engine_expert_parallel`: each EP arm ÷ fsdp
per round (same round, so the same load), median and min–max over the rounds; stated.

    python -m benchmarks.engine_expert_parallel --rounds 3 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import demo_pretraining, ratios, record, spread, table_row

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"fsdp": ["parallel.ep=1"], "ep4": ["parallel.ep=4"], "ep2": ["parallel.ep=2"]}
RANKS = 4
TOKENS = 16 * 256   # the demo's sequences per step × sequence length
# Runs a command and prints the peak resident set (KiB, Linux) of the largest process below it on stderr's last line.
PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def _run(config: Path, run_dir: Path, steps: int, overrides: list[str]) -> tuple[list[dict], int]:
    """One `lagoon train` under torchrun: its metrics rows and the peak resident bytes of its largest rank."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    settings = [f"train.steps={steps}", "train.eval_every=0", "train.checkpoint_every=0",
                "train.checkpoint_at_end=false", "train.progress=false", *overrides]
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc-per-node={RANKS}"]
    lagoon = ["-m", "lagoon", "train", str(config), "--run-dir", str(run_dir),
              *[a for s in settings for a in ("--set", s)]]
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *torchrun, *lagoon], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    return rows, int(result.stderr.strip().splitlines()[-1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default=None, help="a built shard set (default: build the embedded one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps per run (the first 3 are not timed)")
    args = parser.parse_args()
    if args.steps < 4:
        parser.error("--steps must be at least 4 (the first 3 steps are warm-up)")
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="engine-ep-"))
    config, shards = demo_pretraining(work, args.shards)
    base = [f"data.shards=\"{shards}\"", "sdc.faults=[]", f"parallel.dp_shard={RANKS}", "parallel.dp_replicate=1"]
    times: dict[str, list[float]] = {name: [] for name in ARMS}
    state: dict[str, dict] = {}
    peak_rss: dict[str, list[int]] = {name: [] for name in ARMS}
    ep_load: dict[str, list[float]] = {name: [] for name in ARMS}
    names = list(ARMS)
    for round_index in range(args.rounds):
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            rows, rss = _run(config, work / f"{name}-{round_index}", args.steps, base + ARMS[name])
            times[name].append(statistics.median(TOKENS / row["tokens_per_s"] for row in rows[3:]))
            state[name] = {key: rows[0][f"state_bytes/{key}"]
                           for key in ("params", "grads", "optimizer", "expert_params")}
            peak_rss[name].append(rss)
            ep_load[name] += [row["ep_max_load"] for row in rows if "ep_max_load" in row]
            print(f"round {round_index + 1} {name}: {times[name][-1] * 1000:.1f} ms/step, "
                  f"peak RSS {rss / 2**20:.0f} MiB", flush=True)
    med = {name: statistics.median(values) for name, values in times.items()}
    load_end = os.getloadavg()
    lines = [f"Load average (1/5/15 min): {load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f} at the start, "
             f"{load_end[0]:.1f}/{load_end[1]:.1f}/{load_end[2]:.1f} at the end; "
             f"the 2 cores were shared with other jobs",
             "",
             f"`lagoon train`, demo pretraining config (tiny, 8 experts top-2, {TOKENS:,} tokens per step), "
             f"W = {RANKS} gloo ranks, 1 thread each; {args.steps} steps per run, median after 3 warm-up steps; "
             f"{args.rounds} rounds, arm order rotating.", "",
             "| arm | median ms/step | spread (min-max) | ratio to fsdp | params + grads + optimizer per rank | "
             "expert weights per rank | peak RSS, largest rank (median) | busiest EP rank ÷ mean |",
             "|---|---|---|---|---|---|---|---|"]
    for name, values in times.items():
        load = f"{statistics.median(ep_load[name]):.2f}" if ep_load[name] else "—"
        held = state[name]["params"] + state[name]["grads"] + state[name]["optimizer"]
        lines.append(f"| {name} | {med[name] * 1000:.1f} | {min(values) * 1000:.1f}-{max(values) * 1000:.1f} | "
                     f"{med[name] / med['fsdp']:.3f} | {held / 2**10:.1f} KiB | "
                     f"{state[name]['expert_params'] / 2**10:.1f} KiB | "
                     f"{statistics.median(peak_rss[name]) / 2**20:.0f} MiB | {load} |")
    per_round = f", {args.rounds} rounds" if args.rounds > 1 else ""
    lines += ["", table_row("engine_expert_parallel", "stated",
                            f"EP = 4 {spread(ratios(times['ep4'], times['fsdp']), unit='×')}, "
                            f"EP = 2 {spread(ratios(times['ep2'], times['fsdp']), unit='×')} "
                            f"(W = {RANKS}{per_round}, gloo, {os.cpu_count()} cores)", "")]
    record(f"Engine with expert parallelism vs the FSDP2 layout without it, W = {RANKS} (issue 18)", lines)


if __name__ == "__main__":
    main()
