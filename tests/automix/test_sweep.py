"""The proxy sweep: resumable without retraining, and the same sweep on a local Ray instance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from lagoon.automix.backends import RESULT_FILE
from lagoon.automix.sweep import TABLE_FILE
from tests.automix.conftest import automix_config, write_config
from tests.conftest import ROOT


def finished(out_dir) -> dict[str, float]:
    """Proxy directory → mtime of its result file, for every finished proxy."""
    return {path.parent.name: path.stat().st_mtime_ns for path in (out_dir / "proxies").glob(f"*/{RESULT_FILE}")}


# Enough proxies that a slow machine cannot finish them all between the second result and the Ctrl-C.
PROXIES = 8


@pytest.mark.timeout(600)
def test_an_interrupted_sweep_resumes_without_retraining(shard_dir, tmp_path):
    config = write_config(tmp_path / "run.toml", automix_config(
        shard_dir, num_proxies=PROXIES, workers=1, proxy={"train": {"steps": 30}}))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lagoon", "automix", "run", str(config), "--out", str(out), "--no-progress"]
    # SIGINT restored to its default: a suite started in the background inherits it ignored, and Python then
    # never turns it into KeyboardInterrupt.
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 400
    while len(finished(out)) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the driver and its workers
    process.communicate(timeout=120)
    done_before = finished(out)
    assert 2 <= len(done_before) < PROXIES, done_before
    assert not (out / TABLE_FILE).exists() or pq.read_table(out / TABLE_FILE).num_rows < PROXIES
    metrics_before = {name: (out / "proxies" / name / "metrics.jsonl").read_text() for name in done_before}

    from lagoon import automix
    from lagoon.config import load_config

    summary = automix.run(load_config(config), out, show_progress=False)
    done_after = finished(out)
    assert len(done_after) == PROXIES and summary["proxies"] == PROXIES
    for name, mtime in done_before.items():  # finished proxies were not trained again
        assert done_after[name] == mtime
        assert (out / "proxies" / name / "metrics.jsonl").read_text() == metrics_before[name]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert sorted(e["name"] for e in events) == [f"proxy {i}" for i in range(PROXIES)]
    assert pq.read_table(out / TABLE_FILE).num_rows == PROXIES

    # A finished run is a no-op: nothing trains, nothing is rewritten.
    outputs = {path: path.stat().st_mtime_ns for path in out.glob("*.*")}
    assert automix.run(load_config(config), out, show_progress=False)["weights"] == summary["weights"]
    assert finished(out) == done_after and {path: path.stat().st_mtime_ns for path in out.glob("*.*")} == outputs
