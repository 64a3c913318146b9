"""The training engine's step time against the pre-engine DDP path at W=2, and per-rank memory against W.

Method: the demo's pretraining config (configs/demo.toml: the tiny Laguna, seq 256 × 16 sequences, distributed
Muon over 2 gloo ranks, SDC checks) runs `lagoon train` under torchrun for STEPS steps without evaluation or
checkpoints, once per arm per round, the arms interleaved round by round (their order rotating from round to
round) so machine load hits them alike:

    baseline   the tree given by --baseline-src (lagoon before the engine: DDP-style replicated training)
    engine     this tree, the same config (the engine's replicated layout, what the demo runs)
    fsdp       this tree with [parallel] dp_shard = 2 (FSDP2, distributed Muon in fsdp2 mode)

The step time of a run is the median over its steps after the first 3 (warm-up) of step tokens / tokens_per_s;
each arm reports the median over rounds and the spread (min-max), and the ratio engine / baseline. Beside it, the
CPU seconds each run's whole process tree used (launcher, ranks, start-up and all STEPS steps), which a loaded
machine distorts far less than wall time: a busy machine stretches the wall clock, not the work. Memory per
rank: the parameter + gradient + optimizer bytes the engine measures at its first step (`state_bytes/*` in
metrics.jsonl), at W = 1, 2, 4 with dp_shard = W; goal (issue 17): W = 4 ≤ 0.35× W = 1.

README's table rows: `engine_step` (engine ÷ baseline per round, wall and CPU seconds, median and min–max over
the rounds; stated) and `engine_step.memory` (state per rank, W = 4 ÷ W = 1).

    python -m benchmarks.engine_step --baseline-src /path/to/lagoon-before/src --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS, command, demo_pretraining, machine, ratios, spread, table_row

ROOT = Path(__file__).resolve().parents[1]
STEPS = 15
MEMORY_GOAL = 0.35   # state per rank at W = 4 ÷ W = 1 (issue 17)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(src: Path, ranks: int, config: Path, run_dir: Path, overrides: list[str]) -> tuple[list[dict], float]:
    """The run's step rows and the CPU seconds its whole process tree used (start-up included)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    lagoon = ["-m", "lagoon", "train", str(config), "--run-dir", str(run_dir), "--set", f"train.steps={STEPS}",
              "--set", "train.eval_every=0", "--set", "train.checkpoint_every=0", "--set", "train.checkpoint_at_end=false",
              "--set", "train.progress=false", *[a for o in overrides for a in ("--set", o)]]
    launcher = ([str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc-per-node={ranks}"]
                if ranks > 1 else [sys.executable])
    cpu_before = _children_cpu_s()
    result = subprocess.run([*launcher, *lagoon], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    return rows, _children_cpu_s() - cpu_before


def _step_seconds(rows: list[dict], tokens: int) -> float:
    return statistics.median(tokens / row["tokens_per_s"] for row in rows[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", required=True, help="the src/ directory of lagoon before the engine")
    parser.add_argument("--shards", default=None, help="a built shard set (default: build the embedded one)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="engine-step-"))
    # The demo's pretraining sections only (both trees read them; the RL sections changed with the engine).
    config, shards = demo_pretraining(work, args.shards)
    base = [f"data.shards=\"{shards}\"", "sdc.faults=[]"]
    tokens = 16 * 256
    arms = {"baseline": (Path(args.baseline_src), []), "engine": (ROOT / "src", []),
            "fsdp": (ROOT / "src", ["parallel.dp_shard=2"])}
    times: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for round_index in range(args.rounds):
        # The order rotates every round, so no arm always runs first (or right after another).
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            src, overrides = arms[name]
            rows, cpu_s = _run(src, 2, config, work / f"{name}-{round_index}", base + overrides)
            times[name].append(_step_seconds(rows, tokens))
            cpu[name].append(cpu_s)
            print(f"round {round_index + 1} {name}: {times[name][-1] * 1000:.1f} ms/step, {cpu_s:.1f} CPU s",
                  flush=True)
    memory = {}
    for ranks in (1, 2, 4):
        rows, _ = _run(ROOT / "src", ranks, config, work / f"memory-{ranks}",
                    base + ["train.steps=1", f"parallel.dp_shard={ranks}", "parallel.dp_replicate=1",
                            "data.global_batch_size=16"])
        memory[ranks] = sum(rows[0][f"state_bytes/{k}"] for k in ("params", "grads", "optimizer"))
    med = {name: statistics.median(values) for name, values in times.items()}
    med_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    lines = [f"### Engine step time vs the pre-engine path, and state memory per rank ({os.popen('date').read().strip()})",
             "", f"`{command()}` — {machine()}; load: {os.popen('uptime').read().strip()}", "",
             "| arm (W=2, demo pretraining config) | median ms/step | spread (min-max) | ratio to baseline "
             "| CPU s per run (median, min-max) | CPU ratio to baseline |",
             "|---|---|---|---|---|---|"]
    for name, values in times.items():
        lines.append(f"| {name} | {med[name] * 1000:.1f} | {min(values) * 1000:.1f}-{max(values) * 1000:.1f} | "
                     f"{med[name] / med['baseline']:.3f} | {med_cpu[name]:.1f} ({min(cpu[name]):.1f}-"
                     f"{max(cpu[name]):.1f}) | {med_cpu[name] / med_cpu['baseline']:.3f} |")
    lines += ["", "| W (FSDP, dp_shard = W) | parameters + gradients + optimizer per rank | ratio to W=1 |", "|---|---|---|"]
    for ranks, value in memory.items():
        lines.append(f"| {ranks} | {value / 2**20:.2f} MiB | {value / memory[1]:.3f} |")
    wall = spread(ratios(times["engine"], times["baseline"]), unit="×")
    cpu_ratio = spread(ratios(cpu["engine"], cpu["baseline"]), unit="×")
    per_round = f" over {args.rounds} rounds" if args.rounds > 1 else ""
    state = memory[4] / memory[1]
    lines += ["", table_row("engine_step", "stated",
                            f"wall {wall}, CPU-s {cpu_ratio}{per_round} (gloo, {os.cpu_count()} cores)", ""),
              table_row("engine_step.memory", f"≤ {MEMORY_GOAL}", f"{state:.3f}",
                        "met" if state <= MEMORY_GOAL else "missed")]
    text = "\n".join(lines) + "\n"
    print(text)
    with RESULTS.open("a") as handle:
        handle.write("\n" + text)


if __name__ == "__main__":
    main()
