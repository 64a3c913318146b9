"""A local inference server that dies in the middle of `lagoon rl` stops the run with one line, and nothing
committed is lost or trained on twice (a rerun resumes from there)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lagoon.rl.config import TableConfig
from lagoon.rl.store import TrajectoryStore
from lagoon.train.metrics import read_jsonl
from tests.conftest import ROOT


@pytest.mark.timeout(400)
def test_a_server_that_dies_mid_run_stops_it_in_one_line(tmp_path):
    from tests.rl.test_end_to_end import MINI

    config = tmp_path / "mini.toml"
    config.write_text(MINI.replace("total_steps = 8", "total_steps = 40").replace("num_actors = 2", "num_actors = 1")
                      .replace("[rl.eval]\nnum_tasks = 6", "[rl.eval]\nnum_tasks = 0"))
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "lagoon", "rl", str(config), "--run-dir", str(run_dir)],
                               cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not read_jsonl(run_dir / "metrics.jsonl") and time.monotonic() < deadline:   # a step trained
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        [pid] = json.loads((run_dir / "servers.json").read_text())["pids"]
        os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert process.returncode == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "exited with code -9" in lines[0] and "rerun to resume" in lines[0]
    ids = [t.trajectory_id for t in TrajectoryStore(TableConfig(), run_dir).read_all()]
    assert ids and len(ids) == len(set(ids))
    trained = [g for step in read_jsonl(run_dir / "trainer" / "consumed.jsonl") for g in step["groups"]]
    assert len(trained) == len(set(trained))
    assert not (run_dir / "result.json").exists()
