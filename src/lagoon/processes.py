"""Process trees: a launcher stops everything it started, and nothing outlives its launcher.

torchrun (torch 2.13) starts every rank in its own session (``start_new_session=True``), so a signal to
the launcher's process group never reaches the ranks, and a torchrun killed with SIGKILL leaves its ranks
running with parent PID 1, still writing into the run directory. lagoon keeps process trees whole with
three rules:

- a launcher stops a child with `stop_tree` / `kill_tree`, which list every descendant through /proc
  (whatever session or process group it moved to) *before* signalling any of them, so none is orphaned
  half-way and missed;
- lagoon's launchers start their children with `die_with_parent` (Linux's parent-death signal), so a
  child gets SIGTERM when its launcher dies, even by SIGKILL;
- a rank started by torchrun (or `lagoon launch`) watches its parent (`exit_with_launcher`, installed by
  the ``lagoon`` command) and exits on its own, with one line, once the launcher is gone; the same watch
  (`exit_with_parent`) runs in process-pool workers (the AutoMixer's proxies).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable

PARENT_POLL_S = 0.5
"""How often an orphan watch looks at its parent (a lost launcher is noticed within this)."""
EXIT_LAUNCHER_GONE = 1
"""Exit code of a process whose launcher died (nobody is left to read it; it is for the logs)."""


# ------------------------------------------------------------------------------------------- listing
def _parents() -> dict[int, int]:
    """pid → parent pid of every process visible in /proc, read once (a consistent-enough snapshot)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may itself hold spaces or ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        table[int(entry)] = int(fields[1])
    return table


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...), whatever their session; parents first."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, queue = [], list(children.get(pid, []))
    while queue:
        current = queue.pop(0)
        found.append(current)
        queue += children.get(current, [])
    return found


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a dead process its parent has not collected yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


def wait_gone(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Wait until none of `pids` is alive (or `timeout_s` passes); returns those still alive."""
    pids = list(pids)
    deadline = time.monotonic() + timeout_s
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------- stopping
def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Send `sig` to `pid` and every descendant, listed before any is signalled; returns the pids signalled."""
    tree = [pid, *descendants(pid)]
    _signal(tree, sig)
    return tree


def stop_tree(process: subprocess.Popen, grace_s: float = 30.0) -> int | None:
    """Stop a child and everything below it: SIGTERM to the child (a launcher forwards it to its ranks), then,
    after `grace_s`, SIGKILL to every process of the tree that is left. Returns the child's exit code."""
    tree = [process.pid, *descendants(process.pid)]
    if process.poll() is None:
        _signal([process.pid], signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # Whatever survived the grace period (or was started meanwhile, or ignored the launcher's SIGTERM).
    tree += [pid for pid in descendants(process.pid) if pid not in tree]
    _signal([pid for pid in tree if alive(pid)], signal.SIGKILL)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    wait_gone(tree[1:], timeout_s=30)
    return process.returncode


def die_with_parent() -> None:
    """`preexec_fn` of a child: the kernel sends it SIGTERM when the thread that started it dies (Linux
    PR_SET_PDEATHSIG, kept across exec), so a launcher killed by SIGKILL leaves no child behind."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


# ------------------------------------------------------------------------------------------- orphan watch
def under_torchrun() -> bool:
    """True in a process torchrun (or `lagoon launch`, which runs torchrun's agent) started as a rank."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def exit_with_parent(what: str = "its launcher", poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """Exit this process (one line on stderr, code `EXIT_LAUNCHER_GONE`) as soon as its parent is gone.

    A daemon thread compares ``getppid()`` with the parent at the time of the call: an orphan is
    re-parented (to PID 1 or a subreaper), which is how the launcher's death shows. The exit is
    ``os._exit``: no cleanup runs, as if the launcher had taken the process with it; everything lagoon
    writes is atomic, so a later run resumes from what was finished.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        rank = os.environ.get("RANK")
        who = f"rank {rank}" if rank is not None else f"process {os.getpid()}"
        try:
            print(f"lagoon: error: {who}: {what} (pid {parent}) exited; stopping", file=sys.stderr, flush=True)
        finally:
            os._exit(EXIT_LAUNCHER_GONE)

    thread = threading.Thread(target=watch, name="lagoon-parent-watch", daemon=True)
    thread.start()
    return thread


def exit_with_launcher() -> None:
    """Under torchrun: exit when the launcher dies (see `exit_with_parent`); elsewhere nothing."""
    if under_torchrun():
        exit_with_parent("its launcher")
