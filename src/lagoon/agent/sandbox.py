"""The sandbox every agent action (and every hidden-test run) executes in.

Each action is one bubblewrap process tree sharing the episode's workspace:

- never host root: as an ordinary user, bubblewrap maps the sandbox's user (uid 1000 inside) to the
  caller in a new user namespace; when lagoon runs as root, bubblewrap sets the sandbox up as root
  (it can then bind a Python installation under /root) without a user namespace, and the command's
  first step drops to an unprivileged host user (``host_uid``/``host_gid``, ``nobody`` by default)
  before any agent code runs; the workspace is handed to that user;
- no capabilities (``--cap-drop ALL``; as root only setuid/setgid/setpcap survive until that drop, which
  clears them and the bounding set), no new privileges through exec, and a seccomp filter refusing
  mount, ptrace attach, keyrings, eBPF, perf events, modules, kexec, reboot, swap, the clock, the
  host name and new namespaces with EPERM (`lagoon.agent.seccomp`);
- no network (a fresh network namespace holds only a downed loopback);
- the host's system directories (``/usr``, the ``/bin``/``/lib`` links, the loader cache) and the Python
  installation read-only; nothing else of the host exists inside: no home directory, no project checkout,
  no ``/etc/passwd`` of the host (generated files stand in, passed as data), no ``/sys``; ``/proc/sys``
  and ``/proc/sysrq-trigger`` read-only; the root and ``/dev`` read-only;
- a private writable workspace at ``/workspace`` (a host directory) and private size-capped in-memory
  ``/tmp`` and ``/dev/shm``;
- its own PID, IPC, UTS, network and cgroup namespaces, so it cannot see or signal host processes, and
  ``--die-with-parent`` so it dies if the harness does;
- per-process rlimits (CPU seconds, address space, file size, open files, no core dumps) set by ``prlimit``
  as the command starts, and a process cap: pids, memory and cpu cgroups cap the whole sandbox where
  writable (`lagoon.agent.cgroups`), RLIMIT_NPROC inside the sandbox's user namespace otherwise;
- a wall-clock timeout that SIGKILLs the whole tree (killing bwrap kills the namespace's init, and the
  kernel then kills every process in the PID namespace);
- stdout and stderr written to files in ``/workspace/.lagoon/outputs/`` (not pipes, so a background child
  that keeps them open cannot stall the harness), returned head+tail truncated.

What bubblewrap cannot hide: /proc/self/mountinfo shows each bind mount's source as its path within its
filesystem, so the workspace's host directory (a neutral temporary path unless one is given with
``--out``), the Python installation and a virtualenv's real location are visible there; the generated
/etc files are data and show none. README.md ("Sandbox threat model") says what the sandbox promises.

If bubblewrap is missing or cannot create namespaces, `Sandbox` raises `SandboxError` with the reason and
never runs anything unsandboxed; ``backend = "unsafe-local"`` runs actions directly, only when asked.
"""

from __future__ import annotations

import dataclasses
import os
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lagoon.agent.cgroups import CgroupSupport, SandboxCgroup
from lagoon.agent.config import SandboxConfig
from lagoon.agent.runtime import (SANDBOX_GID, SANDBOX_UID, WORKDIR, SandboxError, etc_files, find_bwrap, probe_bwrap,
                                  python_runtime)
from lagoon.agent.seccomp import sandbox_filter
from lagoon.agent.workspace import chown_tree, open_private_files, private_dir_fd, write_private_file

OUTPUT_DIR = ".lagoon/outputs"
"""Workspace-relative directory of every action's full stdout and stderr."""
OUTPUT_PARTS = (".lagoon", "outputs")
ACTION_PARTS = (".lagoon", "actions")
_SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC_FROM_HOST = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime")
_TOOL_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
# As an ordinary user: every namespace, the user namespace included, and no nested user namespaces.
_USER_NAMESPACES = ("--unshare-all", "--unshare-user", "--disable-userns")
# As root: the same without a user namespace, so that setup runs as root and the command drops to host_uid
# (a user namespace made by root maps the sandbox's user to host root; --unshare-all would make one).
_ROOT_NAMESPACES = ("--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try")
# What bubblewrap's last setup step (chdir into a workspace host_uid may have made private) and the command's
# first step (drop to host_uid, clear the bounding set) need; that drop clears them all.
_ROOT_DROP_CAPS = ("CAP_DAC_READ_SEARCH", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")


@dataclass
class RunResult:
    """What one sandboxed command did."""

    exit_code: int | None
    """Exit status; None when the command was killed by the wall-clock timeout."""
    signal: int | None
    """The signal that ended the command, if one did (SIGXCPU: CPU limit, SIGXFSZ: file size limit)."""
    timed_out: bool
    """The wall-clock timeout expired and the process tree was killed."""
    duration_s: float
    """Wall-clock seconds from start to the end of the process tree."""
    stdout: str
    """Stdout, head+tail truncated to the configured sizes."""
    stderr: str
    """Stderr, head+tail truncated."""
    stdout_bytes: int
    """Full size of stdout."""
    stderr_bytes: int
    """Full size of stderr."""
    stdout_path: str
    """Workspace-relative path of the full stdout."""
    stderr_path: str
    """Workspace-relative path of the full stderr."""
    truncated: bool
    """Either stream was cut in the middle."""
    oom_killed: bool = False
    """The memory cgroup killed a process (only known where a memory cgroup is in use)."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def describe_end(self) -> str:
        """One phrase for how the command ended ("" for a clean exit 0)."""
        if self.timed_out:
            return "killed: wall-clock timeout"
        if self.signal is not None:
            name = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "file size limit"}.get(self.signal)
            if self.oom_killed:
                name = "memory limit"
            return f"killed by {signal.Signals(self.signal).name}" + (f" ({name})" if name else "")
        if self.oom_killed:
            return f"exit code {self.exit_code} (memory limit reached)"
        return "" if self.exit_code == 0 else f"exit code {self.exit_code}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_head_tail(fd: int, head_chars: int, tail_chars: int, shown_as: str = "") -> tuple[str, int, bool]:
    """(text, size in bytes, truncated) of an open file: all of it if short, else its head, a marker naming
    `shown_as` (where the full file is) and its tail. Reads only what it keeps, whatever the file's size."""
    size = os.fstat(fd).st_size
    budget = (head_chars + tail_chars) * 4  # UTF-8 needs at most 4 bytes a character
    if size <= budget:
        text = os.pread(fd, size, 0).decode("utf-8", errors="replace")
        if len(text) <= head_chars + tail_chars:
            return text, size, False
        head, tail = text[:head_chars], text[len(text) - tail_chars:] if tail_chars else ""
    else:
        head = os.pread(fd, head_chars * 4, 0).decode("utf-8", errors="replace")[:head_chars]
        tail = os.pread(fd, tail_chars * 4, size - tail_chars * 4).decode("utf-8", errors="replace")
        tail = tail[len(tail) - tail_chars:] if tail_chars else ""
    omitted = size - len(head.encode()) - len(tail.encode())
    where = f"; full output in {shown_as}" if shown_as else ""
    return head + f"\n[... {omitted} bytes omitted{where} ...]\n" + tail, size, True


class Sandbox:
    """An episode's workspace plus the means to run commands against it in fresh sandboxes.

    ``Sandbox(workspace, config).run(["python3", "-c", "print(1)"])`` → `RunResult`. Commands see the
    workspace at `workdir` (``/workspace``); nothing persists between commands except the workspace.
    """

    def __init__(self, workspace: str | Path, config: SandboxConfig | None = None,
                 extra_ro_mounts: list[tuple[str, str]] | None = None):
        self.config = config or SandboxConfig()
        self.workspace = Path(workspace).resolve()
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.extra_ro_mounts = list(extra_ro_mounts or [])
        self._count = 0
        self._lock = threading.Lock()
        self.python = python_runtime(self.config.python)
        self.as_root = False
        self.uid, self.gid = os.getuid(), os.getgid()
        self.seccomp_program: bytes | None = None
        if self.config.backend == "bwrap":
            self.bwrap = find_bwrap(self.config.bwrap)
            self.as_root = os.geteuid() == 0
            probe_bwrap(self.bwrap, _ROOT_NAMESPACES if self.as_root else _USER_NAMESPACES)
            self.cgroups = CgroupSupport.detect() if self.config.cgroups != "off" else CgroupSupport(None, None, 0)
            if self.config.cgroups == "required" and not self.cgroups.available:
                raise SandboxError("agent.sandbox.cgroups = \"required\" but no writable pids cgroup was found")
            if self.as_root and not self.cgroups.available and self.config.cgroups != "off":
                raise SandboxError("lagoon runs as root, where every sandbox runs as the same host user (so "
                                   "RLIMIT_NPROC cannot cap one sandbox), and no writable pids cgroup was found to "
                                   "cap processes; run as an ordinary user, or set agent.sandbox.cgroups = \"off\" "
                                   "to accept an uncapped process count")
            if self.config.seccomp:
                self.seccomp_program = sandbox_filter()
            if self.as_root:
                self.uid, self.gid = self.config.host_uid, self.config.host_gid
                # The agent owns its workspace, as it would as an ordinary user; the harness, being root, still
                # reads and removes everything in it. The harness's directories are made first so they are too.
                for parts in (OUTPUT_PARTS, ACTION_PARTS):
                    os.close(private_dir_fd(self.workspace, *parts))
                chown_tree(self.workspace, self.uid, self.gid)
            else:
                self.uid, self.gid = SANDBOX_UID, SANDBOX_GID
            self.etc = etc_files(self.uid, self.gid)
            self.workdir = WORKDIR
        else:
            self.bwrap = None
            self.cgroups = CgroupSupport(None, None, 0)
            self.workdir = str(self.workspace)
        self.prlimit = shutil.which("prlimit", path=_TOOL_PATH)
        self.setpriv = shutil.which("setpriv", path=_TOOL_PATH)
        self._shell = "bash" if shutil.which("bash", path="/usr/bin:/bin") else "sh"

    # ------------------------------------------------------------------------------------------------
    def _command_prefix(self) -> list[str]:
        """Argv run inside the sandbox before the command: as root, drop to host_uid:host_gid (clearing every
        capability and the bounding set); then set this sandbox's rlimits; then exec the command."""
        c = self.config
        # (soft, hard): the CPU soft limit sends SIGXCPU (reported as such), the hard one a second later SIGKILL.
        limits = {"cpu": (c.cpu_seconds, c.cpu_seconds + 1), "as": (c.memory_mb << 20,) * 2,
                  "fsize": (c.max_file_mb << 20,) * 2, "nofile": (c.max_open_files,) * 2, "core": (0, 0)}
        if self.bwrap is not None and not self.as_root:
            # Inside its own user namespace the sandbox's processes are counted apart from the caller's. As root
            # every sandbox runs as the one host_uid, so the pids cgroup caps processes instead.
            limits["nproc"] = (c.max_processes,) * 2
        drop = self.as_root
        if self.prlimit and (self.setpriv or not drop):
            prefix = []
            if drop:
                prefix = [self.setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                          "--bounding-set=-all", "--inh-caps=-all", "--"]
            return prefix + [self.prlimit, *(f"--{name}={soft}:{hard}" for name, (soft, hard) in limits.items()), "--"]
        # No util-linux: the sandbox's own Python does the same (slower to start; the bounding set stays, which
        # grants nothing to a non-root process that cannot gain privileges through exec).
        names = {"cpu": "RLIMIT_CPU", "as": "RLIMIT_AS", "fsize": "RLIMIT_FSIZE", "nofile": "RLIMIT_NOFILE",
                 "core": "RLIMIT_CORE", "nproc": "RLIMIT_NPROC"}
        code = "import os,resource as r,sys\n" + "".join(f"r.setrlimit(r.{names[k]},{v})\n" for k, v in limits.items())
        if drop:
            gid, uid = ",".join([str(self.gid)] * 3), ",".join([str(self.uid)] * 3)
            code += f"os.setgroups([])\nos.setresgid({gid})\nos.setresuid({uid})\n"
        return [self.python.executable, "-S", "-c", code + "os.execvp(sys.argv[1],sys.argv[1:])"]

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {
            "PATH": f"{self.python.bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": self.workdir, "TMPDIR": "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
            "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat", "NO_COLOR": "1",
        }
        env.update(extra or {})
        return env

    def bwrap_command(self, argv: list[str], env: dict[str, str],
                      info_fd: int | None = None) -> tuple[list[str], list[int]]:
        """(bubblewrap argv, descriptors it reads its data from). The caller passes the descriptors to the child
        (``pass_fds``) and closes them once it has started."""
        c = self.config
        data_fds: list[int] = []

        def data(payload: bytes) -> str:
            data_fds.append(_data_fd(payload))
            return str(data_fds[-1])

        try:
            args = [self.bwrap, *(["--info-fd", str(info_fd)] if info_fd is not None else [])]
            if self.as_root:
                args += [*_ROOT_NAMESPACES, "--cap-drop", "ALL"]
                for cap in _ROOT_DROP_CAPS:
                    args += ["--cap-add", cap]
            else:
                args += [*_USER_NAMESPACES, "--uid", str(self.uid), "--gid", str(self.gid), "--cap-drop", "ALL"]
            args += ["--hostname", "sandbox", "--die-with-parent", "--new-session", "--clearenv",
                     "--ro-bind", "/usr", "/usr"]
            for name in _SYSTEM_LINKS:
                host = Path("/") / name
                if host.is_symlink():
                    args += ["--symlink", os.readlink(host), f"/{name}"]
                elif host.is_dir():
                    args += ["--ro-bind", str(host), f"/{name}"]
            for name, payload in self.etc.items():
                args += ["--perms", "0644", "--file", data(payload), f"/etc/{name}"]
            for name in _ETC_FROM_HOST:
                args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
            made: set[str] = set()
            for source, target in [*self.python.mounts, *((path, path) for path in c.extra_ro_binds)]:
                args += [*_parent_dirs(target, made), "--ro-bind", source, target]
            size = str(c.tmp_size_mb << 20)
            # bubblewrap covers /proc/sys and /proc/sysrq-trigger itself only where it could write them; bind
            # them read-only always (sysctl files show the reader's namespaces, whichever proc they come from).
            args += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys",
                     "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger",
                     "--dev", "/dev", "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
                     "--perms", "1777", "--size", size, "--tmpfs", "/tmp", "--bind", str(self.workspace), WORKDIR]
            for source, target in self.extra_ro_mounts:
                args += [*_parent_dirs(target, made), "--ro-bind", source, target]
            # A read-only root: nothing but /workspace, /tmp and /dev/shm takes writes (the root is an unbounded
            # tmpfs otherwise).
            args += ["--remount-ro", "/", "--chdir", WORKDIR]
            for key, value in env.items():
                args += ["--setenv", key, value]
            if self.seccomp_program is not None:
                args += ["--seccomp", data(self.seccomp_program)]
            return args + ["--", *self._command_prefix(), *argv], data_fds
        except BaseException:
            for fd in data_fds:
                os.close(fd)
            raise

    # ------------------------------------------------------------------------------------------------
    def run(self, argv: list[str], timeout_s: float | None = None, env: dict[str, str] | None = None,
            name: str | None = None) -> RunResult:
        """Run `argv` in a fresh sandbox over the workspace; never raises for what the command does."""
        if name is None:
            with self._lock:
                name = f"{self._count:04d}"
                self._count += 1
        timeout_s = self.config.wall_timeout_s if timeout_s is None else timeout_s
        stdout_fd = stderr_fd = info_read = info_write = -1
        pass_fds: tuple[int, ...] = ()
        data_fds: list[int] = []
        cgroup = None
        try:
            # Our own descriptors: what we read back is what the command wrote, even if it swaps the files.
            stdout_fd, stderr_fd = open_private_files(self.workspace, OUTPUT_PARTS, [f"{name}.stdout", f"{name}.stderr"],
                                                      readable=True)
            if self.bwrap is not None:
                # bwrap writes its child's pid here once the sandbox is set up: no write means it never started.
                info_read, info_write = os.pipe()
                command, data_fds = self.bwrap_command(argv, self._env(env), info_fd=info_write)
                pass_fds = (info_write, *data_fds)
                if self.cgroups.available:
                    try:
                        cgroup = SandboxCgroup(self.cgroups, self.config.max_processes, self.config.memory_mb << 20,
                                               self.config.cpus)
                    except OSError as error:
                        raise SandboxError(f"could not create the sandbox's cgroup: {error}") from None
                    # Join from a shell that then execs bwrap, so no process of the action starts outside.
                    join = "; ".join(f"echo $$ > {shlex.quote(f)} || exit 125" for f in cgroup.procs_files)
                    command = ["/bin/sh", "-c", f'{join}; exec "$@"', "sh", *command]
                popen_env, cwd = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, None
            else:
                command = [*self._command_prefix(), *argv]
                popen_env, cwd = self._env(env), self.workspace
            started = time.perf_counter()
            timed_out = False
            try:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout_fd, stderr=stderr_fd,
                                           env=popen_env, cwd=cwd, start_new_session=True, close_fds=True,
                                           pass_fds=pass_fds)
            except OSError as error:
                raise SandboxError(f"could not start the sandbox: {error}") from None
            if info_write >= 0:
                os.close(info_write)
                info_write = -1
            _close_all(data_fds)
            data_fds = []
            if not _wait_for_exit(process, timeout_s):
                timed_out = True
                _kill_tree(process)
            returncode = process.wait()
            if self.bwrap is None:
                _kill_tree(process)  # unsafe-local: leftovers of the session die with the command
            duration = time.perf_counter() - started
            oom = cgroup.oom_killed() if cgroup is not None else False
            if cgroup is not None:
                cgroup.remove(wait=False)
                cgroup = None
            started_ok = True
            if info_read >= 0:
                os.set_blocking(info_read, False)
                try:
                    started_ok = b"child-pid" in os.read(info_read, 65536)
                except BlockingIOError:
                    started_ok = False
            c = self.config
            shown = f"{self.workdir}/{OUTPUT_DIR}/{name}"
            stdout_text, stdout_size, cut_out = read_head_tail(stdout_fd, c.output_head_chars, c.output_tail_chars,
                                                               f"{shown}.stdout")
            stderr_text, stderr_size, cut_err = read_head_tail(stderr_fd, c.output_head_chars, c.output_tail_chars,
                                                               f"{shown}.stderr")
        finally:
            if cgroup is not None:
                cgroup.remove()
            _close_all([fd for fd in (stdout_fd, stderr_fd, info_read, info_write, *data_fds) if fd >= 0])
        if not started_ok and not timed_out:
            reason = stderr_text.strip().splitlines()[0] if stderr_text.strip() else f"exit status {returncode}"
            raise SandboxError(f"the sandbox could not be set up: {reason}")
        exit_code, sig = _decode_status(returncode, timed_out)
        return RunResult(exit_code=exit_code, signal=sig, timed_out=timed_out, duration_s=duration,
                         stdout=stdout_text, stderr=stderr_text, stdout_bytes=stdout_size, stderr_bytes=stderr_size,
                         stdout_path=f"{OUTPUT_DIR}/{name}.stdout", stderr_path=f"{OUTPUT_DIR}/{name}.stderr",
                         truncated=cut_out or cut_err, oom_killed=oom)

    def run_code(self, language: str, code: str, timeout_s: float | None = None) -> RunResult:
        """Save `code` as ``.lagoon/actions/NNNN.py`` (or ``.sh``) and run it with python3 (or bash)."""
        with self._lock:
            name = f"{self._count:04d}"
            self._count += 1
        if language == "python":
            filename, interpreter = f"{name}.py", "python3"
        else:
            filename, interpreter = f"{name}.sh", self._shell
        write_private_file(self.workspace, ACTION_PARTS, filename, code.encode())
        return self.run([interpreter, f"{self.workdir}/.lagoon/actions/{filename}"], timeout_s=timeout_s, name=name)


def _parent_dirs(target: str, made: set[str]) -> list[str]:
    """bwrap options making each missing parent of a mount point world-readable: bubblewrap 0.11 creates
    them 0700, which as root leaves them closed to the sandbox's unprivileged user."""
    args = []
    for parent in reversed(Path(target).parents[:-1]):  # outermost first, "/" excluded
        if str(parent) not in made:
            made.add(str(parent))
            args += ["--perms", "0755", "--dir", str(parent)]
    return args


def _data_fd(payload: bytes) -> int:
    """The read end of a pipe holding `payload` (which must fit the pipe's 64 KiB buffer) and then EOF."""
    assert len(payload) < 65536
    read, write = os.pipe()
    try:
        os.write(write, payload)
    finally:
        os.close(write)
    return read


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _wait_for_exit(process: subprocess.Popen, timeout_s: float) -> bool:
    """Block until `process` exits (True) or `timeout_s` passes (False), without polling.

    `Popen.wait(timeout)` polls with sleeps of up to 50 ms, which would dominate a sandbox's start-up
    latency; a pidfd (Linux ≥ 5.3) becomes readable the moment the process exits.
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        try:
            process.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout_s)
        return bool(readable)
    finally:
        os.close(pidfd)


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the process group; for bwrap that kills the namespace init, and with it every sandboxed process."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _decode_status(returncode: int, timed_out: bool) -> tuple[int | None, int | None]:
    """(exit code, signal) from a Popen return code; bwrap reports a child's death by signal N as 128 + N."""
    if timed_out:
        return None, signal.SIGKILL
    if returncode < 0:
        return returncode, -returncode
    if 128 < returncode < 128 + 65:
        return returncode, returncode - 128
    return returncode, None
