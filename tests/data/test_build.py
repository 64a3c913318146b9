"""The build: CLI end to end, resumable after being killed, a no-op when finished, refusals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lagoon.data.build import build, embedded_config
from lagoon.errors import LagoonError
from tests.conftest import ROOT, assert_one_line_error, run_lagoon


def _checksums(directory: Path) -> dict:
    manifest = json.loads((directory / "manifest.json").read_text())
    return {name: [s["tokens"]["sha256"] for s in entry["shards"]]
            for kind in ("leaves", "eval") for name, entry in manifest[kind].items()} | {
        "tokenizer": manifest["tokenizer"]["hash"]}


@pytest.mark.timeout(300)
def test_cli_build_killed_midway_resumes_to_the_same_shards(tmp_path, quick_shards_dir):
    out = tmp_path / "resumed"
    command = [sys.executable, "-m", "lagoon", "data", "build", "configs/data_embedded.toml", "--out", str(out),
               "--set", "data.build.quick=true", "--quiet"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 240
    while not (out / ".build" / "curation.json").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the build and its workers, as a crash would
    process.wait()
    assert (out / ".build" / "curation.json").exists() and not (out / "manifest.json").exists()
    result = run_lagoon(*command[3:-1], check=True, env={"COLUMNS": "200"})
    assert "held-out evaluation sets" in result.stdout and "code/q1" in result.stdout
    assert _checksums(out) == _checksums(quick_shards_dir)  # deterministic: same shards as an uninterrupted build
    assert not (out / ".build").exists()
    metrics = [json.loads(line) for line in (out / "build_metrics.jsonl").read_text().splitlines()]
    assert {"stage": "curate", "resumed": True} in metrics


def test_rebuilding_a_finished_directory_is_a_no_op(quick_shards_dir):
    manifest = quick_shards_dir / "manifest.json"
    before = manifest.stat().st_mtime_ns
    started = time.perf_counter()
    assert build(embedded_config(quick=True, build={"quick": True, "workers": 1}), quick_shards_dir) == quick_shards_dir
    assert manifest.stat().st_mtime_ns == before and time.perf_counter() - started < 30
    with pytest.raises(LagoonError, match="built from a different data config"):
        build(embedded_config(quick=True, curation={"buckets": 2}), quick_shards_dir)


def test_config_errors_are_one_line(tmp_path, lagoon_cli):
    config = tmp_path / "bad.toml"
    config.write_text('[[data.sources]]\nkind = "jsonl"\npath = "x.jsonl"\ndomain = "web"\n')
    assert_one_line_error(lagoon_cli("data", "build", str(config), "--out", str(tmp_path / "o")),
                          "data.sources[0].domain", "unknown domain 'web'")
    assert_one_line_error(lagoon_cli("data", "build", str(ROOT / "configs/data_embedded.toml"), "--out", str(tmp_path / "o"),
                                     "--set", "data.curation.buckets=0"), "data.curation.buckets")


@pytest.mark.timeout(300)
def test_ctrl_c_while_reading_sources_is_one_line(tmp_path):
    """Ctrl-C reaches the whole foreground process group, the build's workers included: only the build answers."""
    from lagoon.processes import descendants, kill_tree

    command = [sys.executable, "-m", "lagoon", "data", "build", "configs/data_embedded.toml", "--out",
               str(tmp_path / "out"), "--set", "data.build.quick=true", "--quiet"]
    # SIGINT restored to its default: a suite started in the background inherits it ignored.
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not any(b"spawn_main" in _cmdline(pid) for pid in descendants(process.pid)):  # workers reading
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        time.sleep(0.5)   # into the reading, with every worker started or starting
        assert not (tmp_path / "out" / ".build" / "curation.json").exists()
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        kill_tree(process.pid)
    assert process.returncode == 130, stderr
    assert stderr.strip() == "lagoon: interrupted", stderr


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.timeout(300)
def test_every_progress_bar_ends_at_its_total(tmp_path):
    """A synthetic generator's byte budget is overshot by its last document, or not reached when its seeds run
    out: each bar's total is set to what was done, so every bar ends at exactly 100%."""
    result = run_lagoon("data", "build", "configs/data_embedded.toml", "--out", str(tmp_path / "out"),
                        "--set", "data.build.quick=true", env={"COLUMNS": "200"}, check=True)
    bars = re.findall(r"^(\S.*?)\s+━+\S*\s+(\d+)/(\d+)", result.stdout, flags=re.M)
    names = {name.strip() for name, _, _ in bars}
    assert {"read sources", "synthetic synth_code", "synthetic synth_chat", "tokenize leaves"} <= names, result.stdout
    for name, done, total in bars:
        assert done == total, (name, done, total)
