"""The decision (audit) log: one JSON line per decision, to a file or standard output.

A full disk or a removed file must not stop the gateway from answering (the answer to the SaaS is
already decided), so write failures are counted and logged, never raised; the first record after
a failure reopens the file (log rotation by rename is handled the same way).

Durability: each record is serialised with orjson and handed to the operating system with one
``write()`` on an ``O_APPEND`` descriptor before the answer to the SaaS is sent. Nothing is held
in a user-space buffer, so a crash or kill of the gateway process loses no record it has already
answered for; only what the kernel had not yet written back when the machine itself fails (power
loss, kernel crash) can be lost, as there is no ``fsync`` per record. Batching records behind a
timer would save about a microsecond per decision and could lose a whole batch on a process
crash, which is not a trade a decision trail should make.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)


class AuditLog:
    """Appends records to ``path`` (created mode 0640) or to stdout when ``path`` is None."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.failures = 0
        self._fd: int | None = None

    def _descriptor(self, path: Path) -> int:
        if self._fd is None:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return self._fd

    def write(self, record: dict[str, Any]) -> None:
        """Write one record as a line; never raises for I/O problems."""
        line = orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE)
        try:
            if self.path is None:
                sys.stdout.write(line.decode())
                sys.stdout.flush()
                return
            fd = self._descriptor(self.path)
            view = memoryview(line)
            while view:  # a short write (a nearly full disk) continues where it stopped
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, "no space left for the decision log")
                view = view[written:]
        except OSError as exc:
            self.failures += 1
            self.close()
            if self.failures == 1 or self.failures % 1000 == 0:
                log.error(
                    "decision log write failed (%d so far): %s",
                    self.failures,
                    exc.strerror or exc,
                    extra={"event": "audit_write_failed"},
                )

    def close(self) -> None:
        """Close the file (a later write reopens it)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
