"""A small real shard set built once per session, the tiny training config over it, and launch helpers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lagoon.configio import dumps_toml

ROOT = Path(__file__).resolve().parents[2]

# Tens of milliseconds a step on one thread.
SMALL_MODEL = {"preset": "tiny", "hidden_size": 64, "head_dim": 16, "num_hidden_layers": 2, "intermediate_size": 128,
               "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64}


@pytest.fixture(scope="session")
def sdc_shards(tmp_path_factory) -> Path:
    """One source (part of the standard library's code), no synthetic data: a build of a few seconds."""
    from lagoon.data.build import build, embedded_config

    out = tmp_path_factory.mktemp("sdc_shards") / "code"
    config = embedded_config(quick=True, build={"quick": True, "workers": 1}, synthetic={"enabled": False},
                             sources=[{"kind": "embedded", "embedded": "stdlib_code", "domain": "code",
                                       "max_bytes": 400000}])
    build(config, out, quiet=True)
    return out


def train_config(shards: Path, steps: int = 8, **sections) -> dict:
    config = {
        "model": dict(SMALL_MODEL),
        "data": {"shards": str(shards), "seq_len": 64, "global_batch_size": 12},
        "optim": {"name": "muon", "lr": 0.01, "adamw_lr": 0.003, "ns_dtype": "float32"},
        "train": {"steps": steps, "eval_every": 0, "eval_tokens": 256, "checkpoint_every": 2, "keep_last": 3,
                  "num_threads": 1, "progress": False, "warmup_fraction": 0.1},
        "sdc": {"interval": 2, "policy": "rollback", "timeout_s": 60},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(dumps_toml(config))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def start_ranks(config_path: Path, run_dir: Path, ranks: int) -> list[subprocess.Popen]:
    """``lagoon train`` as `ranks` processes wired the way torchrun wires them (RANK, WORLD_SIZE, MASTER_*), so
    that each rank's own exit code is visible."""
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "lagoon", "train", str(config_path), "--run-dir", str(run_dir)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             env=_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ranks),
                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
            for rank in range(ranks)]


def start_torchrun(config_path: Path, run_dir: Path, ranks: int, **env: str) -> list[subprocess.Popen]:
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc-per-node={ranks}",
               "-m", "lagoon", "train", str(config_path), "--run-dir", str(run_dir)]
    return [subprocess.Popen(command, cwd=ROOT, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)]


def start_launch(config_path: Path, run_dir: Path, ranks: int) -> list[subprocess.Popen]:
    """`lagoon launch` (torchrun that exits with the ranks' own code) over `ranks` processes."""
    command = [sys.executable, "-m", "lagoon", "launch", "--standalone", f"--nproc-per-node={ranks}",
               "train", str(config_path), "--run-dir", str(run_dir)]
    return [subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)]


def wait_all(processes: list[subprocess.Popen], timeout: float) -> tuple[list[int], str]:
    """Exit codes and joined stderr; kills everything still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    codes, errors = [], []
    for process in processes:
        try:
            _, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            from lagoon.processes import kill_tree

            for other in processes:   # the launcher and its ranks (in sessions of their own)
                kill_tree(other.pid)
            raise
        codes.append(process.returncode)
        errors.append(err)
    return codes, "\n".join(errors)


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def final_weights(run_dir: Path, step: int) -> bytes:
    """The checkpoint's model tensors, in order, as bytes (equal bytes: bit-identical weights)."""
    from lagoon.parallel.load import read_dcp_tensors

    tensors = read_dcp_tensors(run_dir / "checkpoints" / f"step_{step:08d}")
    return b"".join(name.encode() + tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                    for name, tensor in tensors)
