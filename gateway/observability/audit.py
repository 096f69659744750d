"""The decision (audit) log: one JSON line per decision, to a file or standard output.

A full disk or a removed file must not stop the gateway from answering (the answer to the SaaS is
already decided), so write failures are counted and logged, never raised; the first record after
a failure reopens the file (log rotation by rename is handled the same way).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


class AuditLog:
    """Appends records to ``path`` (created mode 0640) or to stdout when ``path`` is None."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.failures = 0
        self._handle: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self.path is None:
            return sys.stdout
        if self._handle is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._handle = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
        return self._handle

    def write(self, record: dict[str, Any]) -> None:
        """Write one record as a line; never raises for I/O problems."""
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        try:
            handle = self._open()
            handle.write(line)
            handle.flush()
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
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()
            self._handle = None
