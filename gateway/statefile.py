"""Crash-safe replacement of small state files in the gateway's state directory.

A reader must only ever see the old file or the new one, never a torn mix (catalogue E 100): the
data goes to a private temporary file in the same directory (``mkstemp``: mode 0600, ``O_EXCL``, so
nobody can read it or plant a symlink there), is flushed to disk, renamed over the target with
``os.replace`` (atomic on POSIX), and the directory entry is flushed too.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_atomically(directory: Path, name: str, payload: bytes) -> None:
    """Write ``payload`` as ``directory/name`` (directory created mode 0700); raises OSError."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    if os.name == "posix":  # directories cannot be opened for fsync on Windows
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


RUN_LOCK_FILE = "gateway.lock"


class StateDirInUseError(Exception):
    """Another ``gateway run`` holds the state directory (``pid``: its process id, if known)."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"another gateway ({who}) runs with state directory {directory}; one state "
            "directory serves one gateway process at a time"
        )
        self.directory = directory
        self.pid = pid


def hold_run_lock(directory: Path) -> int | None:
    """Take the state directory for this process: an exclusive ``flock`` on
    ``directory/gateway.lock`` (mode 0600, holding this process's id), kept until the returned
    descriptor is closed or the process ends, however it ends. Raises
    :class:`StateDirInUseError` while another process holds it. None (nothing taken) where
    there is no ``flock``, or where the file cannot be opened (no directory yet, not this
    user's, a symbolic link): what reads the directory next refuses it with the reason.

    Two gateways on one directory would each renew the certificate and replace the key pair
    the other had just proved, and each keep its own replay memory of the same requests."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks to take
        return None
    path = directory / RUN_LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise StateDirInUseError(directory, int(holder) if holder.isdigit() else None) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
