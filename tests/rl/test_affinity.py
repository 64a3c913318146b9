"""rl.trainer.cpus / rl.servers.cpus: validated at load time in one line, applied with CPU affinity in each
role's own process (never in the test process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lagoon.config import load_config
from lagoon.errors import ConfigError
from lagoon.rl.affinity import _ranges, pin_child

CORES = sorted(os.sched_getaffinity(0))


@pytest.mark.parametrize("overrides, field, words", [
    (["rl.trainer.cpus=[0, 0]"], "rl.trainer.cpus", "twice"),
    (["rl.servers.cpus=[100000]"], "rl.servers.cpus", "not available here"),
    ([f"rl.trainer.cpus=[{CORES[0]}]", f"rl.servers.cpus=[{CORES[0]}]"], "rl.servers.cpus", "own cores"),
    ([f"rl.servers.cpus=[{CORES[0]}]", "rl.servers.threads=2"], "rl.servers.cpus", "need more than"),
    ([f"rl.trainer.cpus=[{CORES[0]}]", "rl.trainer.processes=2"], "rl.trainer.cpus", "at least one"),
])
def test_bad_core_lists_are_one_line_config_errors(overrides, field, words):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert error.value.field == field and words in str(error.value) and "\n" not in str(error.value)


def test_disjoint_lists_load():
    if len(CORES) < 2:
        pytest.skip("needs two cores to give each role its own")
    config = load_config(None, [f"rl.trainer.cpus=[{CORES[0]}]", f"rl.servers.cpus=[{CORES[1]}]"])
    assert config.rl.trainer.cpus == [CORES[0]] and config.rl.servers.cpus == [CORES[1]]


def test_a_child_runs_on_its_cores():
    """What `LocalServers` does: the server process is pinned before it execs."""
    core = CORES[-1]
    out = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                         preexec_fn=pin_child(lambda: None, [core]), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str([core])


def test_pin_process_sets_affinity_and_threads():
    """What the trainer role does on start: affinity and one torch thread per core."""
    core = CORES[0]
    code = ("import os, torch; from lagoon.rl.affinity import pin_process; pin_process([%d]); "
            "print(sorted(os.sched_getaffinity(0)), torch.get_num_threads())" % core)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"[{core}] 1"


def test_cli_refuses_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lagoon", "rl", "trainer", str(Path(__file__).parents[2] / "configs" / "rl_demo.toml"), "--run-dir",
                             str(tmp_path), "--set", "rl.trainer.cpus=[100000]"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "rl.trainer.cpus" in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


def test_core_ranges():
    assert _ranges([0, 1, 2, 3, 6, 8, 9]) == "0-3,6,8-9"
