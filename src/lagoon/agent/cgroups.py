"""Whole-sandbox process, memory and CPU limits with Linux cgroups (v1 controllers or a delegated v2 subtree).

Resource limits (rlimits) bind one process at a time, and RLIMIT_NPROC counts a user's processes: when lagoon
runs as root every sandbox runs as the same unprivileged host user (`lagoon.agent.sandbox`), so that count
would be shared by all of them, and a fork bomb in one could starve the others. A pids cgroup caps the
processes of the whole sandbox, whoever owns them; a memory cgroup caps its total resident memory, so a
sandbox of many modest processes cannot take the host's RAM; and a cpu cgroup's bandwidth limit
(``cpu.max``, or ``cpu.cfs_quota_us`` per ``cpu.cfs_period_us`` in v1) caps the cores its threads keep busy
together.

`CgroupSupport.detect()` finds writable pids/memory/cpu controllers once per process; `SandboxCgroup`
creates one leaf per action, which the sandbox's launcher joins before it starts bubblewrap (so every
process the action forks is inside), then kills what is left and removes the leaf.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_counter = itertools.count()
_detect_lock = threading.Lock()
_detected: "CgroupSupport | None" = None


@dataclass(frozen=True)
class CgroupSupport:
    """Where this process may create cgroups: a parent directory per controller (None when unavailable)."""

    pids_parent: Path | None
    memory_parent: Path | None
    version: int  # 1 (per-controller hierarchies) or 2 (unified); 0 when none
    cpu_parent: Path | None = None

    @property
    def available(self) -> bool:
        return self.pids_parent is not None

    @staticmethod
    def detect() -> "CgroupSupport":
        global _detected
        with _detect_lock:
            if _detected is None:
                _detected = _detect()
                _reap_stale(_detected)
            return _detected


def _reap_stale(support: CgroupSupport) -> None:
    """Kill and remove the leaves of lagoon processes that died without cleaning up.

    bubblewrap's --die-with-parent has a start-up window (before its inner process sets its parent-death
    signal) in which a harness killed outright leaves the sandbox running; its cgroup leaf outlives it.
    """
    for parent in {support.pids_parent, support.memory_parent, support.cpu_parent} - {None}:
        try:
            names = [entry.name for entry in parent.iterdir() if entry.name.startswith("lagoon-")]
        except OSError:
            continue
        for name in names:
            parts = name.split("-")
            if len(parts) != 3 or not parts[1].isdigit() or Path(f"/proc/{parts[1]}").exists():
                continue
            leaf = SandboxCgroup.__new__(SandboxCgroup)
            leaf.support, leaf.leaves = support, [parent / name]
            leaf.remove()


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, filesystem type, super options) of every cgroup mount of this mount namespace."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        root, mount_point = fields[3], fields[4]
        if root != "/":
            continue  # a bind of a sub-cgroup; /proc/self/cgroup paths would not line up
        found.append((mount_point, tail[0], set(tail[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """Controller name (or "" for v2) → this process's cgroup path."""
    paths = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _probe(parent: Path, limit_file: str) -> bool:
    """Can we create a child of `parent` that has `limit_file`?"""
    probe = parent / f"lagoon-probe-{os.getpid()}-{next(_counter)}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return (probe / limit_file).exists() and os.access(probe / "cgroup.procs", os.W_OK)
    finally:
        try:
            probe.rmdir()
        except OSError:
            pass


def _detect() -> CgroupSupport:
    own = _own_paths()
    mounts = _mounts()
    v1 = {}
    for mount_point, kind, options in mounts:
        if kind == "cgroup":
            for controller in ("pids", "memory", "cpu"):
                if controller in options:
                    v1[controller] = Path(mount_point) / own.get(controller, "/").lstrip("/")
    if "pids" in v1 and _probe(v1["pids"], "pids.max"):
        memory = v1.get("memory")
        memory = memory if memory is not None and _probe(memory, "memory.limit_in_bytes") else None
        cpu = v1.get("cpu")
        cpu = cpu if cpu is not None and _probe(cpu, "cpu.cfs_quota_us") else None
        return CgroupSupport(pids_parent=v1["pids"], memory_parent=memory, version=1, cpu_parent=cpu)
    for mount_point, kind, _ in mounts:
        if kind != "cgroup2" or "" not in own:
            continue
        # A v2 leaf needs "pids" enabled in its parent's subtree_control. Enabling it on the cgroup that holds
        # this very process is refused (no internal processes), so this works only in a delegated subtree
        # that already delegates pids, e.g. systemd-run --user --scope -p Delegate=yes.
        parent = Path(mount_point) / own[""].lstrip("/")
        try:
            enabled = (parent / "cgroup.subtree_control").read_text().split()
        except OSError:
            continue
        if "pids" in enabled and _probe(parent, "pids.max"):
            memory = parent if "memory" in enabled else None
            cpu = parent if "cpu" in enabled else None
            return CgroupSupport(pids_parent=parent, memory_parent=memory, version=2, cpu_parent=cpu)
    return CgroupSupport(pids_parent=None, memory_parent=None, version=0)


CPU_PERIOD_US = 100_000
"""CFS bandwidth period (the kernel's default): a sandbox may run `cpus` x 100 ms of CPU per 100 ms."""


def realtime_blocks_cpu(support: CgroupSupport) -> bool:
    """With v1 real-time group scheduling a SCHED_FIFO/RR task cannot join a cpu cgroup that has no real-time
    budget (the write to cgroup.procs fails with EINVAL), so a real-time harness (a latency benchmark) gets
    no cpu leaf."""
    return (support.version == 1 and (support.cpu_parent / "cpu.rt_runtime_us").exists()
            and os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR))


class SandboxCgroup:
    """One action's cgroup leaves: created with limits, joined by the launcher, emptied and removed."""

    def __init__(self, support: CgroupSupport, max_processes: int, memory_bytes: int, cpus: float = 0.0):
        assert support.available
        self.support = support
        name = f"lagoon-{os.getpid()}-{next(_counter)}"
        self.leaves: list[Path] = []
        pids = support.pids_parent / name
        pids.mkdir()
        self.leaves.append(pids)
        try:
            (pids / "pids.max").write_text(str(max_processes))
            if support.memory_parent is not None:
                memory = support.memory_parent / name if support.version == 1 else pids
                if memory != pids:
                    memory.mkdir()
                    self.leaves.append(memory)
                if support.version == 1:
                    (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
                    swap = memory / "memory.memsw.limit_in_bytes"
                    if swap.exists():  # swap accounting on: cap memory + swap at the same figure
                        swap.write_text(str(memory_bytes))
                else:
                    (memory / "memory.max").write_text(str(memory_bytes))
                    if (memory / "memory.swap.max").exists():
                        (memory / "memory.swap.max").write_text("0")
            self.cpu_limited = cpus > 0 and support.cpu_parent is not None and not realtime_blocks_cpu(support)
            if self.cpu_limited:
                cpu = support.cpu_parent / name if support.version == 1 else pids
                if cpu not in self.leaves:
                    cpu.mkdir()
                    self.leaves.append(cpu)
                quota = max(1000, int(cpus * CPU_PERIOD_US))  # the kernel's smallest quota is 1 ms
                if support.version == 1:
                    (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                    (cpu / "cpu.cfs_quota_us").write_text(str(quota))
                else:
                    (cpu / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
        except OSError:
            self.remove()
            raise

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid into to join every leaf."""
        return [str(leaf / "cgroup.procs") for leaf in self.leaves]

    def pids(self) -> list[int]:
        found: set[int] = set()
        for leaf in self.leaves:
            try:
                found.update(int(p) for p in (leaf / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return sorted(found)

    def kill_all(self) -> None:
        """SIGKILL every process still in the leaves (normally none: the PID namespace died with bwrap)."""
        kill_file = self.leaves[0] / "cgroup.kill"
        if self.support.version == 2 and kill_file.exists():
            try:
                kill_file.write_text("1")
                return
            except OSError:
                pass
        for _ in range(50):
            remaining = self.pids()
            if not remaining:
                return
            for pid in remaining:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)

    def remove(self, wait: bool = True) -> None:
        """Kill what is left and delete the leaves. A leaf stays busy for a few milliseconds after its
        last process exits; with ``wait=False`` a background thread finishes the deletion."""
        if not wait:
            _janitor_queue().put(self)
            return
        self.kill_all()
        busy = [leaf for leaf in self.leaves if not _try_rmdir(leaf)]
        _remove_when_free(busy)


    def peak_memory_bytes(self) -> int | None:
        for leaf in self.leaves:
            for name in ("memory.max_usage_in_bytes", "memory.peak"):
                try:
                    return int((leaf / name).read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    continue
        return None

    def oom_killed(self) -> bool:
        for leaf in self.leaves:
            for name, key in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")):
                try:
                    for line in (leaf / name).read_text().splitlines():
                        parts = line.split()
                        if len(parts) == 2 and parts[0] == key and int(parts[1]) > 0:
                            return True
                except (OSError, ValueError):
                    continue
        return False


def _try_rmdir(leaf: Path) -> bool:
    try:
        leaf.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:  # EBUSY until the kernel has released the exited processes
        return False


def _remove_when_free(leaves: list[Path], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(leaves)
    while pending and time.monotonic() < deadline:
        time.sleep(0.005)
        pending = [leaf for leaf in pending if not _try_rmdir(leaf)]


_janitor: "queue.SimpleQueue[SandboxCgroup] | None" = None
_janitor_lock = threading.Lock()


def _janitor_queue() -> "queue.SimpleQueue[SandboxCgroup]":
    """A daemon thread that deletes busy leaves off the critical path (leftovers are reaped at next start)."""
    global _janitor
    with _janitor_lock:
        if _janitor is None:
            _janitor = queue.SimpleQueue()
            work = _janitor

            def run() -> None:
                while True:
                    work.get().remove(wait=True)

            threading.Thread(target=run, name="lagoon-cgroup-janitor", daemon=True).start()
        return _janitor
