"""Process logging: one JSON object per line in production, a readable line in development.

Secrets never reach a log line (ARCHITECTURE rule 6): values that look like credentials - SAS
tokens, ``Authorization`` values, ``sig=``/``password=`` parameters, PEM private keys - are masked
by a filter on every record, as a last line of defence behind code that simply does not log them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from gateway.errors import MASK, one_line, redact

# Attributes every LogRecord has; anything else was passed with `extra=` and is a structured field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# One implementation for logs, printed problems and command output (gateway.errors.redact).
__all__ = ["MASK", "ConsoleFormatter", "JsonFormatter", "RedactingFilter", "configure", "redact"]


class RedactingFilter(logging.Filter):
    """Masks credentials in the message and in string-valued structured fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place; never drops it."""
        record.msg = redact(record.getMessage())
        record.args = ()
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise ``record``; values JSON cannot hold are written with ``str``."""
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, separators=(",", ":"))


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS level logger: message key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` on one line (plus a traceback when there is one)."""
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")
        )
        line = f"{clock} {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        # One line whatever the values held (JSON lines need nothing: json.dumps escapes).
        line = one_line(line)
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


class FieldsFilter(logging.Filter):
    """Adds the same structured fields to every record (a worker's number, for example)."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        super().__init__()
        self._fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        """Set the fields a record does not carry already; never drops it."""
        for key, value in self._fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def configure(
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    *,
    fields: Mapping[str, Any] | None = None,
) -> None:
    """Install the gateway's handler on the root logger (replacing earlier ones); ``fields`` are
    added to every line (a worker process adds its number)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    if fields:
        handler.addFilter(FieldsFilter(fields))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log duplicates our audit records; keep only its warnings.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
