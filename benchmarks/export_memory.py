"""Peak memory of `lagoon export hf` from a sharded (torch.distributed.checkpoint) checkpoint of ~0.5B parameters.

Method: a checkpoint of the `small` preset widened to about 0.5B parameters is written to a temporary directory
in /tmp (deleted afterwards) as a training run writes it: ``dcp/`` with the float32 master weights sharded over 2
ranks (2 gloo processes, FSDP2 via the engine), plus config.json — optimizer state left out, the export never
reads it. A tiny checkpoint is written alike. Each export runs in a fresh process (`lagoon.parallel.export.
stream_export`, what ``lagoon export hf`` calls) to bfloat16 with an output-file budget B: the process first
exports the tiny checkpoint (imports, allocator and code paths warmed), resets its peak (VmHWM, through
/proc/self/clear_refs), exports the big one and reports its peak RSS above the level before. Budgets are run
in turn for several rounds.

What the streaming export may hold at once: the output file being filled (≤ B, plus the tensor that crosses
it), the tensor just read (float32) and its Hugging Face pieces. Goal: peak ≤ B + 3 × the largest tensor's
float32 bytes, for every budget — "one shard's worth" — and well under the checkpoint's bytes. README's table
row `export_memory`: peak above the tiny export ÷ the checkpoint's bytes per budget (median and range over the
rounds), its status that goal.

    python -m benchmarks.export_memory --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS, command, machine, spread, table_row

ROOT = Path(__file__).resolve().parents[1]
BIG = {"hidden_size": 1024, "num_hidden_layers": 9, "num_experts": 32, "moe_intermediate_size": 512,
       "vocab_size": 32768, "head_dim": 64}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_experts": 4, "vocab_size": 512, "head_dim": 16}
BUDGETS_MIB = (64, 256, 4096)

WRITE = """
import json, sys, torch, torch.distributed as dist
from pathlib import Path
from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.optim import OptimConfig
from lagoon.parallel.checkpoint import write_model_files
from lagoon.parallel.config import ParallelConfig
from lagoon.parallel.engine import Engine
from lagoon.parallel.load import DCP_DIR, MODEL_KEY, model_tensors
from lagoon.train.distributed import setup
import torch.distributed.checkpoint as dcp

out, overrides = Path(sys.argv[1]), json.loads(sys.argv[2])
torch.set_num_threads(1)
info = setup("cpu")
config = preset_config("small", **overrides)
engine = Engine.build(config, ParallelConfig(dp_replicate=1, dp_shard=-1), OptimConfig(name="adamw"), info, seed=0)
dcp.save({MODEL_KEY: model_tensors(engine.model)}, checkpoint_id=str(out / DCP_DIR))
if info.rank == 0:
    write_model_files(config, out, None)
    print(json.dumps({"parameters": sum(p.numel() for p in engine.model.parameters()),
                      "largest": max(t.numel() * 4 for t in model_tensors(engine.model).values())}))
info.close()
"""

PEAK = """
import json, sys, torch
from pathlib import Path
from lagoon.parallel.export import stream_export

def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024

torch.set_num_threads(1)
tiny, big, out, budget = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
stream_export(tiny, out / "tiny", torch.bfloat16, shard_bytes=budget)
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")           # reset the peak (VmHWM) to the current RSS
stream_export(big, out / "big", torch.bfloat16, shard_bytes=budget)
files = len(list((out / "big").glob("*.safetensors")))
print(json.dumps({"extra_bytes": status("VmHWM") - before, "files": files}))
"""


def _write(path: Path, overrides: dict) -> dict:
    """A 2-rank FSDP2 checkpoint's dcp/ directory and config.json at `path`."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "--no-python", sys.executable, "-c", WRITE, str(path), json.dumps(overrides)],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def _peak(tiny: Path, big: Path, work: Path, budget: int) -> dict:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    try:
        result = subprocess.run([sys.executable, "-c", PEAK, str(tiny), str(big), str(out), str(budget)], cwd=ROOT,
                                capture_output=True, text=True, timeout=3600)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="export-memory-", dir="/tmp"))
    try:
        _write(work / "tiny", TINY)
        shape = _write(work / "big", BIG)
        size = sum(p.stat().st_size for p in (work / "big" / "dcp").glob("*.distcp"))
        rows: dict[int, list[dict]] = {mib: [] for mib in BUDGETS_MIB}
        for _ in range(args.rounds):
            for mib in BUDGETS_MIB:
                rows[mib].append(_peak(work / "tiny", work / "big", work, mib << 20))
                print(f"budget {mib} MiB: {rows[mib][-1]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    largest = shape["largest"]
    lines = [f"### lagoon export hf from a sharded checkpoint: peak memory ({os.popen('date').read().strip()})", "",
             f"`{command()}` — {machine()}; load: {os.popen('uptime').read().strip()}", "",
             f"A 2-rank FSDP2 checkpoint of {shape['parameters'] / 1e9:.2f}B parameters: dcp/ holds "
             f"{size / 2**20:.0f} MiB of float32 weights (largest tensor {largest / 2**20:.0f} MiB), exported to "
             f"bfloat16 ({shape['parameters'] * 2 / 2**20:.0f} MiB out).", "",
             "| output-file budget B | files | peak RSS above the tiny export (min-max) | ÷ checkpoint bytes "
             "| bound B + 3 × largest | within |", "|---|---|---|---|---|---|"]
    met = True
    for mib, results in rows.items():
        extra = [r["extra_bytes"] for r in results]
        bound = min(mib << 20, shape["parameters"] * 2) + 3 * largest
        met &= max(extra) <= bound
        lines.append(f"| {mib} MiB | {results[0]['files']} | {min(extra) / 2**20:.0f}-{max(extra) / 2**20:.0f} MiB | "
                     f"{max(extra) / size:.2f} | {bound / 2**20:.0f} MiB | {'yes' if max(extra) <= bound else 'no'} |")
    per_budget = ", ".join(f"B = {mib} MiB {spread([r['extra_bytes'] / size for r in results], unit='×')}"
                           for mib, results in rows.items())
    lines += ["", f"Goal (peak ≤ one output file's budget + 3 × the largest tensor, every budget): "
                  f"{'met' if met else 'missed'}.", "",
              table_row("export_memory", "≤ budget + 3 × largest tensor",
                        f"{per_budget} of the checkpoint's bytes ({shape['parameters'] / 1e9:.2f}B parameters, "
                        f"{args.rounds} rounds)", "met" if met else "missed"), ""]
    text = "\n".join(lines)
    print(text)
    with RESULTS.open("a") as handle:
        handle.write("\n" + text)


if __name__ == "__main__":
    main()
