"""The training engine's step time against the pre-engine DDP path at W=2, and per-rank memory against W.

Method: the demo's pretraining config (configs/demo.toml: the tiny Laguna, seq 256 × 16 sequences, distributed
Muon over 2 gloo ranks, SDC checks) runs `lagoon train` under torchrun for STEPS steps without evaluation or
checkpoints, once per arm per round, the arms interleaved round by round (their order rotating from round to
round) so machine load hits them alike:

    baseline   the tree given by --baseline-src (lagoon before the engine: DDP-style replicated training)
    engine     this tree, the same config (the engine's replicated layout, what the demo runs)
    fsdp       this tree with [parallel] dp_shard = 2 (FSDP2, distributed Muon in fsdp2 mode)

The step time of a run is the median over its steps after the first 3 (warm-up) of step tokens / tokens_per_s;
each arm reports the median over rounds and the spread (min-max), and the ratio engine / baseline. Memory per
rank: the parameter + gradient + optimizer bytes the engine measures at its first step (`state_bytes/*` in
metrics.jsonl), at W = 1, 2, 4 with dp_shard = W.

    python -m benchmarks.engine_step --baseline-src /path/to/lagoon-before/src --rounds 3
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

from benchmarks.common import RESULTS, command, machine

ROOT = Path(__file__).resolve().parents[1]
STEPS = 15


def _run(src: Path, ranks: int, config: Path, run_dir: Path, overrides: list[str]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    lagoon = ["-m", "lagoon", "train", str(config), "--run-dir", str(run_dir), "--set", f"train.steps={STEPS}",
              "--set", "train.eval_every=0", "--set", "train.checkpoint_every=0", "--set", "train.checkpoint_at_end=false",
              "--set", "train.progress=false", *[a for o in overrides for a in ("--set", o)]]
    launcher = ([str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc-per-node={ranks}"]
                if ranks > 1 else [sys.executable])
    result = subprocess.run([*launcher, *lagoon], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"step"' in line]


def _step_seconds(rows: list[dict], tokens: int) -> float:
    return statistics.median(tokens / row["tokens_per_s"] for row in rows[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", required=True, help="the src/ directory of lagoon before the engine")
    parser.add_argument("--shards", default=None, help="a built shard set (default: build the embedded one)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="engine-step-"))
    shards = Path(args.shards) if args.shards else work / "shards"
    if not args.shards:
        subprocess.run([sys.executable, "-m", "lagoon", "data", "build", str(ROOT / "configs" / "data_embedded.toml"),
                        "--out", str(shards), "--quiet"],
                       cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    # The demo's pretraining sections only (both trees read them; the RL sections changed with the engine).
    import tomllib

    from lagoon.configio import dumps_toml

    demo = tomllib.loads((ROOT / "configs" / "demo.toml").read_text())
    config = work / "pretrain.toml"
    config.write_text(dumps_toml({key: demo[key] for key in ("model", "data", "optim", "train", "sdc")}))
    base = [f"data.shards=\"{shards}\"", "sdc.faults=[]"]
    tokens = 16 * 256
    arms = {"baseline": (Path(args.baseline_src), []), "engine": (ROOT / "src", []),
            "fsdp": (ROOT / "src", ["parallel.dp_shard=2"])}
    times: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for round_index in range(args.rounds):
        # The order rotates every round, so no arm always runs first (or right after another).
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            src, overrides = arms[name]
            rows = _run(src, 2, config, work / f"{name}-{round_index}", base + overrides)
            times[name].append(_step_seconds(rows, tokens))
            print(f"round {round_index + 1} {name}: {times[name][-1] * 1000:.1f} ms/step", flush=True)
    memory = {}
    for ranks in (1, 2, 4):
        rows = _run(ROOT / "src", ranks, config, work / f"memory-{ranks}",
                    base + ["train.steps=1", f"parallel.dp_shard={ranks}", "parallel.dp_replicate=1",
                            "data.global_batch_size=16"])
        memory[ranks] = sum(rows[0][f"state_bytes/{k}"] for k in ("params", "grads", "optimizer"))
    med = {name: statistics.median(values) for name, values in times.items()}
    lines = [f"### Engine step time vs the pre-engine path, and state memory per rank ({os.popen('date').read().strip()})",
             "", f"`{command()}` — {machine()}; load: {os.popen('uptime').read().strip()}", "",
             "| arm (W=2, demo pretraining config) | median ms/step | spread (min-max) | ratio to baseline |",
             "|---|---|---|---|"]
    for name, values in times.items():
        lines.append(f"| {name} | {med[name] * 1000:.1f} | {min(values) * 1000:.1f}-{max(values) * 1000:.1f} | "
                     f"{med[name] / med['baseline']:.3f} |")
    lines += ["", "| W (FSDP, dp_shard = W) | parameters + gradients + optimizer per rank | ratio to W=1 |", "|---|---|---|"]
    for ranks, value in memory.items():
        lines.append(f"| {ranks} | {value / 2**20:.2f} MiB | {value / memory[1]:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with RESULTS.open("a") as handle:
        handle.write("\n" + text)


if __name__ == "__main__":
    main()
