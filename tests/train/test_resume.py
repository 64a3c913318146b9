"""Exact resume after SIGKILL (single process and 2 gloo ranks), corrupted checkpoints skipped with a reason,
and DDP on 2 ranks matching one process with the same global batch.

Deadlines here are ceilings for a machine at load 10, not expectations: every wait also ends as soon as
the process it waits on has exited."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lagoon.config import LagoonConfig
from lagoon.configio import from_dict
from lagoon.processes import kill_tree, wait_gone
from lagoon.train import run_training
from tests.conftest import ROOT
from tests.train.conftest import losses, train_config, write_config

KILL_AFTER = "step_00000008"
RUN_S = 600
"""Ceiling for one 16-step run (or the wait for its checkpoint 8) on a loaded machine."""


def _command(config_path: Path, run_dir: Path, ranks: int) -> list[str]:
    lagoon = ["-m", "lagoon", "train", str(config_path), "--run-dir", str(run_dir)]
    if ranks == 1:
        return [sys.executable, *lagoon]
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun), "--standalone", f"--nproc-per-node={ranks}", *lagoon]


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _run(config_path: Path, run_dir: Path, ranks: int) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(config_path, run_dir, ranks), cwd=ROOT, env=_env(), capture_output=True,
                            text=True, timeout=RUN_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _run_and_kill(config_path: Path, run_dir: Path, ranks: int) -> None:
    """Start a run and SIGKILL every process of it at once (torchrun and its ranks, which torchrun starts in
    sessions of their own, so a killpg would miss them) once checkpoint 8 exists."""
    process = subprocess.Popen(_command(config_path, run_dir, ranks), cwd=ROOT, env=_env(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + RUN_S
    try:
        while not (run_dir / "checkpoints" / KILL_AFTER).is_dir():
            assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, f"no checkpoint appeared within {RUN_S} s"
            time.sleep(0.01)
    finally:
        killed = kill_tree(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        # Nothing of the killed run may still write into run_dir while the resumed run trains there.
        assert wait_gone(killed, timeout_s=60) == [], "a rank survived the kill"
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "checkpoints" / "step_00000016").exists(), "the run finished before it was killed"


def _corrupt_newest_and_leave_a_torn_write(run_dir: Path) -> str:
    """Flip one byte of the newest checkpoint's weights and leave a half-written staging directory beside it."""
    root = run_dir / "checkpoints"
    newest = sorted(p for p in root.iterdir() if p.name.startswith("step_"))[-1]
    weights = newest / "dcp" / "__0_0.distcp"    # rank 0's shard of the weights and optimizer state
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x40
    weights.write_bytes(bytes(data))
    torn = root / ".step_00000099.tmp-4242"
    torn.mkdir()
    (torn / "dcp").mkdir()
    (torn / "dcp" / "__0_0.distcp").write_bytes(b"partial")
    return newest.name


@pytest.fixture(scope="module")
def reference(shard_dir, tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted single-process run, in this process (the same code path as the CLI): (config, run dir)."""
    root = tmp_path_factory.mktemp("resume")
    config = train_config(shard_dir)
    config_path = write_config(root / "run.toml", config)
    threads = torch.get_num_threads()
    try:
        result = run_training(from_dict(LagoonConfig, config), root / "reference")
    finally:
        torch.set_num_threads(threads)
    assert result.step == 16 and set(result.eval_bpb) == {"code", "general", "math", "stem"}
    assert [step for step, _ in losses(root / "reference")] == list(range(1, 17))
    return config_path, root / "reference"


@pytest.mark.timeout(3 * RUN_S)
def test_sigkill_resume_is_bit_exact_single_process(reference, tmp_path):
    config_path, reference_dir = reference
    expected = losses(reference_dir)

    # Single process: SIGKILL after checkpoint 8, corrupt the newest checkpoint, resume.
    killed = tmp_path / "killed"
    _run_and_kill(config_path, killed, ranks=1)
    corrupted = _corrupt_newest_and_leave_a_torn_write(killed)
    resumed = _run(config_path, killed, ranks=1)
    assert f"skipping checkpoint {corrupted}: dcp/__0_0.distcp does not match its SHA-256" in resumed.stderr
    assert "removing .step_00000099.tmp-4242: an interrupted checkpoint write" in resumed.stderr
    assert "resuming from step_" in resumed.stderr
    assert losses(killed) == expected                     # bit for bit, one line per step
    events = [json.loads(line)["event"] for line in (killed / "events.jsonl").read_text().splitlines()]
    assert "checkpoint_skipped" in events and "resume" in events


@pytest.mark.timeout(5 * RUN_S)
def test_sigkill_resume_is_bit_exact_under_ddp(reference, tmp_path):
    config_path, reference_dir = reference
    expected = losses(reference_dir)

    # Two gloo ranks: an uninterrupted run, and one killed (every process at once) and resumed.
    ddp_reference = tmp_path / "ddp_reference"
    _run(config_path, ddp_reference, ranks=2)
    ddp_expected = losses(ddp_reference)
    ddp_killed = tmp_path / "ddp_killed"
    _run_and_kill(config_path, ddp_killed, ranks=2)
    _corrupt_newest_and_leave_a_torn_write(ddp_killed)
    _run(config_path, ddp_killed, ranks=2)
    assert losses(ddp_killed) == ddp_expected

    # DDP on 2 ranks computes the same updates as one process with the same global batch (to float tolerance).
    for (step, single), (ddp_step, ddp) in zip(expected, ddp_expected, strict=True):
        assert step == ddp_step and abs(single - ddp) < 1e-5, (step, single, ddp)
    single_bpb = json.loads((reference_dir / "metrics.jsonl").read_text().splitlines()[-1])
    ddp_bpb = json.loads((ddp_reference / "metrics.jsonl").read_text().splitlines()[-1])
    for group in ("code", "general", "math", "stem"):
        assert abs(single_bpb[f"eval_bpb/{group}"] - ddp_bpb[f"eval_bpb/{group}"]) < 1e-4
