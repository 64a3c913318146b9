"""Process trees under torchrun: ranks in their own sessions are still stopped by `kill_tree`, and a rank whose
launcher was killed with SIGKILL exits on its own (torch 2.13's torchrun starts every rank in a new session, so
killing the launcher's process group leaves them running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lagoon.processes import alive, descendants, kill_tree, wait_gone
from tests.conftest import ROOT
from tests.train.conftest import train_config, write_config

# Generous for a machine at load 10: a rank notices its launcher's death within half a second when it runs.
RANKS_GONE_S = 180


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _ranks_of(launcher: int) -> list[int]:
    """The processes below `launcher` that run `lagoon train` (torchrun's ranks, each in its own session)."""
    found = []
    for pid in descendants(launcher):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"lagoon" in command and b"train" in command:
            found.append(pid)
    return found


def _long_run(shard_dir: Path, tmp_path: Path) -> list[str]:
    # SDC off: its watchdog uses the launcher's store and would end the ranks on its own; this test is about
    # the watch every lagoon rank keeps on its launcher, whatever the config.
    config = train_config(shard_dir, train={"steps": 100000, "eval_every": 0, "checkpoint_every": 100000},
                          data={"repetition_cap": 1e9}, sdc={"enabled": False})
    path = write_config(tmp_path / "long.toml", config)
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun), "--standalone", "--nproc-per-node=2", "-m", "lagoon", "train", str(path),
            "--run-dir", str(tmp_path / "run")]


def test_kill_tree_reaches_a_child_in_its_own_session(tmp_path):
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert os.getsid(child) != os.getsid(parent.pid)   # a killpg of the parent's group would miss it
        assert set(kill_tree(parent.pid)) == {parent.pid, child}
        parent.wait(timeout=60)
        assert wait_gone([child], timeout_s=60) == []
    finally:
        kill_tree(parent.pid)
        parent.wait(timeout=60)


@pytest.mark.timeout(600)
def test_ranks_exit_on_their_own_when_torchrun_is_killed(shard_dir, tmp_path):
    launcher = subprocess.Popen(_long_run(shard_dir, tmp_path), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    ranks: list[int] = []
    try:
        # Both ranks started and training (every rank has passed its set-up once the first step is logged).
        deadline = time.monotonic() + 400
        while not (tmp_path / "run" / "metrics.jsonl").is_file():
            assert launcher.poll() is None, launcher.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        ranks = _ranks_of(launcher.pid)
        assert len(ranks) == 2 and all(os.getsid(r) != os.getsid(launcher.pid) for r in ranks), ranks
        os.kill(launcher.pid, signal.SIGKILL)                 # the launcher alone, as a crash or OOM kill would
        launcher.wait(timeout=60)
        assert wait_gone(ranks, timeout_s=RANKS_GONE_S) == [], "ranks outlived their launcher"
        assert "its launcher" in launcher.stderr.read()
    finally:
        for pid in [launcher.pid, *ranks]:
            if alive(pid):
                kill_tree(pid)
        launcher.stderr.close()


@pytest.mark.timeout(600)
def test_stop_tree_stops_lagoon_launch_and_its_ranks(shard_dir, tmp_path):
    """What `lagoon demo` and `lagoon rl` do to a launcher they started when they are stopped: SIGTERM reaches the
    launcher, which stops its ranks and exits 128 + 15; anything left after the grace period is killed."""
    from lagoon.processes import stop_tree

    command = _long_run(shard_dir, tmp_path)
    command = [sys.executable, "-m", "lagoon", "launch", *command[1:3], *command[5:]]   # the same, via lagoon launch
    launcher = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 400
        while not (tmp_path / "run" / "metrics.jsonl").is_file():
            assert launcher.poll() is None, launcher.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        ranks = _ranks_of(launcher.pid)
        assert len(ranks) == 2, ranks
        assert stop_tree(launcher, grace_s=120) == 128 + signal.SIGTERM
        assert wait_gone(ranks, timeout_s=5) == []
    finally:
        for pid in [launcher.pid, *ranks]:
            if alive(pid):
                kill_tree(pid)
        launcher.stderr.close()
