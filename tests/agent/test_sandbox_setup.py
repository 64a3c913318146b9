"""The sandbox refuses to run code when it cannot sandbox it, and runs unsandboxed only when asked."""

from __future__ import annotations

import dataclasses
import os
import stat

import pytest

from lagoon.agent.config import SandboxConfig
from lagoon.agent.sandbox import Sandbox, SandboxError, python_runtime
from lagoon.config import load_config
from lagoon.errors import ConfigError


def test_missing_bwrap_is_a_clear_error(tmp_path):
    with pytest.raises(SandboxError, match="not an executable"):
        Sandbox(tmp_path / "ws", SandboxConfig(bwrap=str(tmp_path / "no-such-bwrap")))


@pytest.mark.timeout(60)
def test_bwrap_that_cannot_create_namespaces_never_runs_code(tmp_path):
    # A bwrap stand-in that fails the way bubblewrap does where user namespaces are disabled.
    broken = tmp_path / "bwrap"
    broken.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(SandboxError, match="cannot create a sandbox here.*No permissions"):
        Sandbox(tmp_path / "ws", SandboxConfig(bwrap=str(broken)))


@pytest.mark.timeout(60)
def test_unsafe_local_mode_only_when_asked(tmp_path):
    sandbox = Sandbox(tmp_path / "ws", SandboxConfig(backend="unsafe-local", wall_timeout_s=10))
    result = sandbox.run_code("python", "import os; print(os.getcwd())")
    assert result.ok and result.stdout.strip() == str((tmp_path / "ws").resolve())
    assert sandbox.workdir == str((tmp_path / "ws").resolve())


@pytest.mark.timeout(60)
def test_python_in_the_sandbox_is_the_hosts_read_only(tmp_path):
    runtime = python_runtime("host")
    sandbox = Sandbox(tmp_path / "ws", SandboxConfig(wall_timeout_s=30))
    result = sandbox.run(["python3", "-c", "import sys, pytest; print(sys.version_info[:2]); print(sys.prefix)"])
    assert result.ok, result
    assert result.stdout.splitlines()[0] == str(tuple(os.sys.version_info[:2]))
    assert result.stdout.splitlines()[1] in {target for _, target in runtime.mounts}


def test_config_validation():
    with pytest.raises(ConfigError, match="agent.sandbox.memory_mb"):
        load_config(None, ["agent.sandbox.memory_mb=0"])
    with pytest.raises(ConfigError, match="agent.sandbox.backend"):
        load_config(None, ["agent.sandbox.backend=\"docker\""])
    config = load_config(None, ["agent.sandbox.wall_timeout_s=5", "agent.budgets.max_steps=3"])
    assert config.agent.sandbox.wall_timeout_s == 5.0 and config.agent.budgets.max_steps == 3
    assert dataclasses.asdict(config.agent)["sampling"]["temperature"] == 0.7


@pytest.mark.timeout(60)
def test_cgroup_leaves_of_dead_harnesses_are_reaped():
    import subprocess

    from lagoon.agent import cgroups

    support = cgroups.CgroupSupport.detect()
    if not support.available:
        pytest.skip("no writable pids cgroup here")
    dead = subprocess.Popen(["true"])
    dead.wait()
    leaf = support.pids_parent / f"lagoon-{dead.pid}-0"  # named like the leaf of a harness that has died
    leaf.mkdir()
    orphan = subprocess.Popen(["sleep", "300"])
    (leaf / "cgroup.procs").write_text(str(orphan.pid))
    cgroups._reap_stale(support)
    assert orphan.wait(timeout=10) == -9
    assert not leaf.exists()


def test_configs_agent_toml_spells_out_the_defaults():
    from pathlib import Path

    from lagoon.agent.config import AgentConfig

    root = Path(__file__).resolve().parents[2]
    assert load_config(root / "configs" / "agent.toml").agent == AgentConfig()


@pytest.mark.timeout(60)
def test_python_launcher_agrees_with_util_linux(tmp_path):
    """The fallback launcher (the sandbox's Python, where prlimit/setpriv are missing) sets the same user,
    rlimits and capabilities as the util-linux one."""
    probe = ["sh", "-c", "id -u; id -g; id -G; ulimit -n; ulimit -f; ulimit -c; ulimit -t; grep -E '^Cap(Prm|Eff)' "
                         "/proc/self/status"]
    config = SandboxConfig(wall_timeout_s=30, max_open_files=123, max_file_mb=7, cpu_seconds=9)
    fast = Sandbox(tmp_path / "a", config)
    reference = Sandbox(tmp_path / "b", config)
    reference.prlimit = reference.setpriv = None
    assert reference._command_prefix()[0] == reference.python.executable
    results = [sandbox.run(probe) for sandbox in (fast, reference)]
    assert all(result.ok for result in results), results
    assert results[0].stdout == results[1].stdout, (results[0].stdout, results[1].stdout)
    assert results[0].stdout.split()[3:6] == ["123", str((7 << 20) // 512), "0"]  # sh counts 512-byte blocks
