"""`lagoon train` with distributed Muon (``optim.distributed = "ddp"``) under torchrun with gloo: a run
checkpointed on 4 ranks resumes on 2 and follows single-process training; ranks with different configs
fail at once with one clear line instead of hanging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lagoon.config import LagoonConfig
from lagoon.configio import from_dict
from lagoon.train import run_training
from tests.conftest import ROOT
from tests.optim.distributed_helpers import free_port
from tests.train.conftest import losses, train_config, write_config


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def _torchrun(config_path: Path, run_dir: Path, ranks: int, *overrides: str) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", f"--nproc-per-node={ranks}", "-m", "lagoon", "train", str(config_path),
               "--run-dir", str(run_dir), *[arg for o in overrides for arg in ("--set", o)]]
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _config(shard_dir: Path, distributed: str, **sections) -> dict:
    # A constant learning rate, so that a run of 4 steps and one of 8 follow the same schedule.
    return train_config(shard_dir, optim={"distributed": distributed}, **sections,
                        train={"steps": 8, "schedule": "constant", "warmup_fraction": 0.0, "checkpoint_every": 4,
                               "eval_every": 4, "max_grad_norm": 1.0})


@pytest.fixture(scope="module")
def single(shard_dir, tmp_path_factory) -> Path:
    """The single-process reference run (8 steps, checkpoints at 4 and 8)."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    threads = torch.get_num_threads()
    try:
        run_training(from_dict(LagoonConfig, _config(shard_dir, "none")), run_dir)
    finally:
        torch.set_num_threads(threads)
    return run_dir


def _assert_follows(run_dir: Path, single: Path) -> None:
    got, expected = losses(run_dir), losses(single)
    assert [step for step, _ in got] == list(range(1, 9))
    for (step, a), (_, b) in zip(got, expected, strict=True):
        assert abs(a - b) < 1e-5, (step, a, b)
    ours, theirs = (json.loads((d / "metrics.jsonl").read_text().splitlines()[-1]) for d in (run_dir, single))
    evals = [key for key in theirs if key.startswith("eval_bpb/")]
    assert evals and all(abs(ours[key] - theirs[key]) < 1e-4 for key in evals)


@pytest.mark.timeout(600)
def test_checkpoint_from_4_ranks_resumes_on_2(shard_dir, single, tmp_path):
    config_path = write_config(tmp_path / "run.toml", _config(shard_dir, "ddp"))
    run_dir = tmp_path / "run"
    _torchrun(config_path, run_dir, 4, "train.steps=4")
    four, one = (_optimizer_state(d / "checkpoints" / "step_00000004") for d in (run_dir, single))
    # The saved optimizer state has one form whatever the world size: global tensors by parameter name.
    assert four["optim.step"].item() == one["optim.step"].item() == 4
    assert set(four) == set(one) and any(".muon." in key for key in four) and any(".adamw." in key for key in four)
    for key, tensor in four.items():
        torch.testing.assert_close(tensor, one[key], rtol=1e-4, atol=1e-5, msg=key)

    resumed = _torchrun(config_path, run_dir, 2)
    assert "resuming from step_00000004" in resumed.stderr
    _assert_follows(run_dir, single)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    assert all("grad_norm" in row for row in rows)


def _optimizer_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every optimizer tensor of a sharded checkpoint, read whole (DCP without a process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    path = str(checkpoint / "dcp")
    metadata = FileSystemReader(path).read_metadata()
    state = {key: torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
             for key, entry in metadata.state_dict_metadata.items() if key.startswith("optim.")}
    dcp.load(state, checkpoint_id=path, no_dist=True)
    return state


@pytest.mark.timeout(600)
def test_fsdp2_trains_checkpoints_and_resumes(shard_dir, single, tmp_path):
    """FSDP2 sharding through `lagoon train` (with the SDC checks on): sharded checkpoints, evaluation, resume —
    same as one process."""
    config = _config(shard_dir, "ddp", parallel={"dp_replicate": 1, "dp_shard": -1})
    config_path = write_config(tmp_path / "run.toml", config)
    run_dir = tmp_path / "run"
    _torchrun(config_path, run_dir, 2, "train.steps=4")
    resumed = _torchrun(config_path, run_dir, 2)
    assert "resuming from step_00000004" in resumed.stderr
    _assert_follows(run_dir, single)


@pytest.mark.timeout(180)
def test_ranks_with_different_configs_fail_fast(shard_dir, tmp_path):
    config_path = write_config(tmp_path / "run.toml", train_config(shard_dir, optim={"distributed": "ddp"}))
    port = free_port()
    processes = []
    for rank, lr in ((0, "0.01"), (1, "0.02")):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        command = [sys.executable, "-m", "lagoon", "train", str(config_path), "--run-dir", str(tmp_path / "run"),
                   "--set", f"optim.lr={lr}"]
        processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    for process in processes:
        _, stderr = process.communicate(timeout=150)
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        assert process.returncode == 2, stderr[-2000:]
        assert "Traceback" not in stderr
        assert "optim.lr" in lines[-1] and "0.01" in lines[-1] and "0.02" in lines[-1], lines[-1]
