"""Peak memory of `lagoon serve --dtype bfloat16` on a bf16 Laguna checkpoint of ~0.5B parameters.

Method: two bf16 checkpoints are written to a temporary directory (deleted afterwards): a tiny one and one of
the `small` preset widened with overrides to about 0.5B parameters (built on the meta device and initialised
tensor by tensor, so writing it needs no fp32 copy either). Each is served with `lagoon serve --dtype
bfloat16 --port 0`; once `/health` answers, the server's peak resident memory (VmHWM in /proc/PID/status) is
read and the server stopped. The figure is (peak of the big one − peak of the tiny one) / the big
checkpoint's bytes on disk, over several rounds alternating the two; goal ≤ 1.2 (before the engine: 2.7).

    python -m benchmarks.serve_memory --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.common import RESULTS, command, machine

ROOT = Path(__file__).resolve().parents[1]
BIG = {"hidden_size": 1024, "num_hidden_layers": 11, "num_experts": 32, "moe_intermediate_size": 512,
       "vocab_size": 32768, "head_dim": 64}


def _write(path: Path, **overrides) -> int:
    import torch

    from lagoon.model import LagunaForCausalLM, preset_config, save_pretrained
    from lagoon.parallel.materialize import init_parameters, materialize

    with torch.device("meta"):
        model = LagunaForCausalLM(preset_config("small", **overrides))
    model.to(torch.bfloat16)
    materialize(model, "cpu")
    torch.manual_seed(0)
    init_parameters(model)
    save_pretrained(model, path, dtype=torch.bfloat16)
    return sum(p.numel() for p in model.parameters())


def _peak(checkpoint: Path) -> int:
    """VmHWM (bytes) of a `lagoon serve` of `checkpoint` once it is healthy."""
    log = checkpoint.with_suffix(".log")
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "lagoon", "serve", str(checkpoint), "--dtype", "bfloat16",
                                    "--port", "0", "--threads", "1"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        url = None
        while url is None:
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the server did not come up"
            for line in log.read_text().splitlines():
                if "http://127.0.0.1:" in line:
                    url = "http://127.0.0.1:" + line.split("http://127.0.0.1:")[1].split()[0].split("/")[0]
            time.sleep(0.5)
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5).read()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.5)
        status = Path(f"/proc/{process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-memory-", dir="/tmp"))
    try:
        _write(work / "tiny", hidden_size=64, num_hidden_layers=2, num_experts=4, vocab_size=512, head_dim=16)
        parameters = _write(work / "big", **BIG)
        size = sum(p.stat().st_size for p in (work / "big").glob("*.safetensors"))
        ratios = []
        for _ in range(args.rounds):
            tiny, big = _peak(work / "tiny"), _peak(work / "big")
            ratios.append((big - tiny) / size)
            print(f"tiny {tiny / 2**20:.0f} MiB, big {big / 2**20:.0f} MiB: {ratios[-1]:.2f}x of {size / 2**20:.0f} MiB",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = (f"### lagoon serve --dtype bfloat16 peak memory ({os.popen('date').read().strip()})\n\n"
            f"`{command()}` — {machine()}; load: {os.popen('uptime').read().strip()}\n\n"
            f"A bf16 checkpoint of {parameters / 1e9:.2f}B parameters ({size / 2**20:.0f} MiB): peak RSS above serving "
            f"a tiny model = {min(ratios):.2f}-{max(ratios):.2f}x the checkpoint's bytes over {args.rounds} rounds "
            f"(goal ≤ 1.2x; {'met' if max(ratios) <= 1.2 else 'missed'}).\n")
    print(text)
    with RESULTS.open("a") as handle:
        handle.write("\n" + text)


if __name__ == "__main__":
    main()
