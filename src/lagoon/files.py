"""Published files get the permissions the user's umask asks for.

Atomic writes stage into a temporary directory and rename it into place. `tempfile.mkdtemp` creates that
directory with mode 0700 whatever the umask, and safetensors writes its file 0600, so an exported model
(``lagoon export hf``, ``lagoon import hf``, `lagoon.model.save_pretrained`) would come out private to its
owner even under a umask of 022 — unreadable to a serving account or a colleague. `staging_dir` and
`publish_mode` give them the modes ``mkdir`` and ``open`` give everything else: 0777 / 0666 minus the umask.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

_LOCK = threading.Lock()


def current_umask() -> int:
    """This process's umask, read without changing it (Linux ≥ 4.7 lists it in /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _LOCK:  # elsewhere: set and restore (a brief window other threads of this process could see)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def publish_mode(path: str | os.PathLike) -> None:
    """Give `path` the mode a plain ``mkdir`` (directories) or ``open`` (files) would have: 0777 or 0666 & ~umask."""
    path = Path(path)
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


def staging_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A fresh staging directory in `parent` (for an atomic rename into place) with the umask's mode, not 0700."""
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    publish_mode(staging)
    return staging
