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
