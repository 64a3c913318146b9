"""A proxy worker whose AutoMixer driver was killed stops on its own instead of training on for nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lagoon.processes import alive, descendants, kill_tree, wait_gone
from tests.automix.conftest import automix_config, write_config
from tests.conftest import ROOT


def _workers(driver: int) -> list[int]:
    """The driver's process-pool workers (spawned interpreters running multiprocessing's spawn_main)."""
    found = []
    for pid in descendants(driver):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.timeout(600)
def test_proxy_workers_exit_when_the_driver_is_killed(shard_dir, tmp_path):
    # Proxies far longer than the test: a worker that kept training would still be there at the deadline.
    config = write_config(tmp_path / "run.toml", automix_config(
        shard_dir, num_proxies=3, workers=1, max_epochs=1e6, proxy={"train": {"steps": 1_000_000}}))
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-m", "lagoon", "automix", "run", str(config), "--out", str(out),
                               "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 400
        while not list(out.glob("proxies/*/metrics.jsonl")):   # a proxy is training
            assert driver.poll() is None, driver.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no proxy started training"
            time.sleep(0.2)
        workers = _workers(driver.pid)
        assert workers
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
        assert wait_gone(workers, timeout_s=180) == [], "a proxy worker outlived its driver"
    finally:
        for pid in [driver.pid, *workers]:
            if alive(pid):
                kill_tree(pid)
        driver.stderr.close()
