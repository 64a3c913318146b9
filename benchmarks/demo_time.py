"""Claim (issue 11): the main job, `lagoon demo configs/demo.toml`, runs end to end in ≤ 30 minutes on 2 CPU
cores, and its figures are real: AutoMixer's mixture, pretraining loss, the SDC drill caught, reward rising
under RL.

Runs the command exactly as `make demo` does, in a fresh run directory, as a child process; reports wall time
against the 30-minute budget, the CPU time the whole process tree used, each stage's time, and the headline
results from RUN/pipeline.json and RUN/evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import record

BUDGET_MIN = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.toml")
    parser.add_argument("--run-dir", default="runs/bench/demo")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    run_dir = Path(args.run_dir)
    if run_dir.exists():
        sys.exit(f"{run_dir} exists: the benchmark times a fresh run; remove it or pass another --run-dir")
    started = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "lagoon", "demo", args.config, "--run-dir", str(run_dir)]).returncode
    wall = time.perf_counter() - started
    if code != 0:
        sys.exit(f"lagoon demo exited with {code}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    state = json.loads((run_dir / "pipeline.json").read_text())
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    stages = state["stages"]
    pretrain, rl = stages["pretrain"]["summary"], stages["rl"]["summary"]
    reward = evaluation.get("arith_code_reward", {})
    lines = [
        f"`{args.config}` from an empty run directory; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs at the end (a shared machine).",
        "",
        "| stage | " + " | ".join(stages) + " | total |",
        "|---|" + "---|" * (len(stages) + 1),
        "| wall (s) | " + " | ".join(f"{entry['seconds']:.0f}" for entry in stages.values()) + f" | {wall:.0f} |",
        "",
        f"- **Wall time {wall / 60:.1f} min, {wall / 60 / BUDGET_MIN:.2f}× the {BUDGET_MIN:.0f}-minute budget** "
        f"({'met' if wall / 60 <= BUDGET_MIN else 'not met'}); CPU time of the process tree "
        f"{(usage.ru_utime + usage.ru_stime) / 60:.1f} min.",
        f"- Pretraining: {pretrain['steps']} steps on {pretrain['ranks']} ranks, final loss {pretrain['loss']:.3f}; "
        f"{pretrain['sdc_checks']} SDC checks, {pretrain['sdc_injected']} injected fault, "
        f"{pretrain['sdc_rollbacks']} rollback ({', '.join(pretrain['sdc_events'])}).",
        f"- Held-out arith-code reward before → after RL: {reward.get('before RL', float('nan')):.3f} → "
        f"{reward.get('after RL', float('nan')):.3f} ({rl['version']} policy versions).",
        "- Held-out bits per byte, pretrained → after RL: " + ", ".join(
            f"{group} {evaluation['bpb']['pretrained'][group]:.3f} → {evaluation['bpb']['after RL'][group]:.3f}"
            for group in sorted(evaluation["bpb"]["pretrained"])) + ".",
        f"- Exported checkpoint in transformers vs lagoon: max |Δlogit| "
        f"{evaluation.get('transformers_max_abs_logit_diff', float('nan')):.1e}. Report: `{run_dir / 'report.html'}`.",
    ]
    print("\n".join(lines))
    if not args.no_record:
        record("The main job end to end: lagoon demo on 2 CPU cores (issue 11)", lines)


if __name__ == "__main__":
    main()
