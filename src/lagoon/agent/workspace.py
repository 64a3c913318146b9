"""Host-side file operations on directories that sandboxed code controls, done without following its links.

Whatever runs in the sandbox can plant symlinks, FIFOs and odd permissions in the workspace. The harness
writes action files and output captures into the workspace and copies workspaces for grading, so every
such operation here refuses to follow symlinks (a planted ``.lagoon/outputs -> /home/user`` must not make
the harness write into the user's home) and never opens anything but regular files (a FIFO would block).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _remove_entry(name: str, dir_fd: int) -> None:
    """Delete one directory entry (a file, a link, or a whole tree) without following links."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            os.chmod(fd, 0o700)
            for child in os.listdir(fd):
                _remove_entry(child, fd)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def private_dir_fd(root: Path, *parts: str) -> int:
    """An fd of ``root/parts...``, each part a real directory owned by us (re-created if it was a link or file)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            assert part and "/" not in part and part not in (".", "..")
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except (NotADirectoryError, OSError):
                # A symlink (ELOOP), a file, or a directory made unreadable: replace it with a fresh directory.
                _remove_entry(part, fd)
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_private_files(root: Path, parts: tuple[str, ...], names: list[str], readable: bool = False) -> list[int]:
    """New, empty, regular files ``root/parts/<name>`` opened for writing (and reading), replacing whatever was
    there (one walk down the directories for all of them)."""
    dir_fd = private_dir_fd(root, *parts)
    fds: list[int] = []
    try:
        mode = (os.O_RDWR if readable else os.O_WRONLY) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for name in names:
            try:
                fds.append(os.open(name, mode, 0o644, dir_fd=dir_fd))
            except FileExistsError:
                _remove_entry(name, dir_fd)
                fds.append(os.open(name, mode, 0o644, dir_fd=dir_fd))
        return fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        os.close(dir_fd)


def open_private_file(root: Path, parts: tuple[str, ...], name: str, readable: bool = False) -> int:
    """A new, empty, regular file ``root/parts/name`` opened for writing (and reading), replacing whatever was there."""
    return open_private_files(root, parts, [name], readable)[0]


def write_private_file(root: Path, parts: tuple[str, ...], name: str, data: bytes) -> None:
    fd = open_private_file(root, parts, name)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def open_regular_for_reading(path: Path) -> int | None:
    """An fd of `path` if it is a regular file reached without symlinks below the workspace, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def copy_tree(source: Path, target: Path, skip: set[str] | None = None, max_bytes: int = 1 << 30) -> None:
    """Copy a workspace: directories and regular files are copied, symlinks kept as links (never followed),
    anything else (FIFOs, sockets, devices) skipped. `skip` names top-level entries to leave out."""
    target.mkdir(parents=True, exist_ok=True)
    budget = [max_bytes]

    def walk(src_fd: int, dst: Path, top: bool) -> None:
        for name in sorted(os.listdir(src_fd)):
            if top and skip and name in skip:
                continue
            info = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(name, dir_fd=src_fd), dst / name)
            elif stat.S_ISDIR(info.st_mode):
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=src_fd)
                except PermissionError:
                    continue
                try:
                    (dst / name).mkdir()
                    walk(child, dst / name, False)
                finally:
                    os.close(child)
            elif stat.S_ISREG(info.st_mode):
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
                except PermissionError:
                    continue
                budget[0] -= info.st_size
                if budget[0] < 0:
                    os.close(fd)
                    raise OSError(f"workspace is larger than {max_bytes} bytes")
                with os.fdopen(fd, "rb") as reader, open(dst / name, "wb") as writer:
                    shutil.copyfileobj(reader, writer, 1 << 20)
                os.chmod(dst / name, stat.S_IMODE(info.st_mode) | 0o600)

    root_fd = os.open(source, _DIR_FLAGS)
    try:
        walk(root_fd, target, True)
    finally:
        os.close(root_fd)


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give `path` and everything below it to `uid`:`gid`, links included, without following any link (a
    planted ``x -> /etc/shadow`` changes the owner of the link, never of its target)."""

    def walk(dir_fd: int) -> None:
        for name in os.listdir(dir_fd):
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (info.st_uid, info.st_gid) != (uid, gid):
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                try:
                    walk(child)
                finally:
                    os.close(child)

    root = os.open(path, _DIR_FLAGS)
    try:
        os.chown(root, uid, gid)
        walk(root)
    finally:
        os.close(root)


def remove_tree(path: Path) -> None:
    """Delete a workspace, whatever the sandbox left in it (read-only dirs included), without following links."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    parent = os.open(path.parent, _DIR_FLAGS)
    try:
        _remove_entry(path.name, parent)
    finally:
        os.close(parent)
