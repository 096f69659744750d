"""Export of decision log records to where auditors look: a syslog collector and standard output.

Both exports carry the very lines the decision log holds (same bytes, same ``seq`` and ``prev``),
so a record in the SIEM can be matched to the chain. They must never slow a request down: the
decision log hands each line to :meth:`Exporter.offer`, which only puts it on a bounded queue
(``put_nowait``); a worker thread per destination does the blocking I/O. When the queue is full
(the collector is down or slower than the traffic) the line is dropped from the export, counted
in ``gateway_decision_export_dropped_total{sink=...}``, and stays in the decision log file.

Syslog: RFC 5424 messages over TLS (RFC 5425, TLS 1.2 or later, default port 6514) with
octet-counting framing (RFC 5425 section 4.3, ``MSG-LEN SP SYSLOG-MSG``). Each message is
``<PRI>1 TIMESTAMP HOSTNAME gateway PROCID MSGID - JSON``: the record's own time, MSGID
``decision``, ``checkpoint`` or ``seal``, no structured data, and the JSON line as MSG. The
severity follows the result (RFC 5424 section 6.2.1): informational for allowed requests and
checkpoints, notice for refusals, warning for monitor-mode ``would_deny``, failures and errors.
A lost connection is re-established with backoff; the batch in flight is sent again, so a
collector may see a line twice (the ``seq`` tells duplicates apart), never a line cut in half.

Standard output: one JSON line per record, for container log shippers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.config import LoadedConfig

log = logging.getLogger(__name__)

__all__ = [
    "Exporter",
    "StdoutSink",
    "SyslogSettings",
    "SyslogSink",
    "build_exporters",
    "syslog_context",
    "syslog_message",
]

# RFC 5424 section 6.2.1 severities.
_INFO, _NOTICE, _WARNING = 6, 5, 4
_SEVERITY = {
    "allowed": _INFO,
    "denied": _NOTICE,
    "rejected": _NOTICE,
    "would_deny": _WARNING,
    "failed": _WARNING,
    "error": _WARNING,
}
# RFC 5424 section 6.2.4: HOSTNAME is 1-255 printable US-ASCII characters.
_NOT_PRINTABLE = re.compile(r"[^\x21-\x7e]")
# Lines sent per write: bounds a batch that may be sent twice after a reconnect.
MAX_BATCH = 256
# Seconds between reconnection attempts, doubling up to the cap.
RETRY_FIRST, RETRY_MAX = 0.5, 30.0


class Sink(Protocol):
    """One export destination; ``send`` blocks (it runs on the exporter's thread)."""

    name: str

    def send(self, lines: Sequence[bytes]) -> None:
        """Deliver ``lines`` (raises ``OSError`` if they may not have arrived)."""
        ...

    def close(self) -> None:
        """Release the connection (a later ``send`` reconnects)."""
        ...


class Exporter:
    """A bounded queue and a worker thread in front of one sink."""

    def __init__(
        self,
        sink: Sink,
        *,
        capacity: int = 10_000,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.sink = sink
        self.dropped = 0
        self.sent = 0
        self._queue: queue.Queue[bytes] = queue.Queue(capacity)
        self._on_drop = on_drop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"export-{sink.name}", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def offer(self, line: bytes) -> None:
        """Queue ``line`` for export without ever blocking; count it if the queue is full."""
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(self.sink.name)
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning(
                    "decision export to %s is behind: %d records dropped so far",
                    self.sink.name,
                    self.dropped,
                    extra={"event": "export_dropped"},
                )

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued for at most ``timeout`` seconds, then stop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():  # else it is still in a bounded send; it is a daemon
            self.sink.close()

    def _run(self) -> None:
        delay = RETRY_FIRST
        batch: list[bytes] = []
        while True:
            if not batch:
                try:
                    batch.append(self._queue.get(timeout=0.2))
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            try:
                self.sink.send(batch)
            except (OSError, ValueError) as exc:
                self.sink.close()
                log.warning(
                    "decision export to %s failed: %s; retrying in %.1f s",
                    self.sink.name,
                    exc,
                    delay,
                    extra={"event": "export_failed"},
                )
                # Stop waits for the queue to drain only while the sink works.
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, RETRY_MAX)
                continue
            self.sent += len(batch)
            batch = []
            delay = RETRY_FIRST


class StdoutSink:
    """JSON lines on standard output."""

    name = "stdout"

    def send(self, lines: Sequence[bytes]) -> None:
        """Write the lines and flush."""
        sys.stdout.write("".join(line.decode() + "\n" for line in lines))
        sys.stdout.flush()

    def close(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True)
class SyslogSettings:
    """Where and how to reach the syslog collector."""

    host: str
    port: int
    context: ssl.SSLContext
    server_name: str
    facility: int = 13  # RFC 5424 section 6.2.1: "log audit"
    timeout: float = 5.0
    hostname: str = ""


def syslog_context(
    ca_file: Path | None, certificate: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A TLS 1.2+ client context verifying the collector (with ``ca_file``, else the system
    store), presenting a client certificate when one is given."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 5425 section 4.2 requires TLS
    if certificate is not None:
        context.load_cert_chain(str(certificate), str(key) if key else None)
    return context


def syslog_message(line: bytes, *, facility: int, hostname: str, procid: int) -> bytes:
    """The RFC 5424 message for one decision log line."""
    try:
        record = json.loads(line)
    except ValueError:
        record = {}
    if not isinstance(record, dict):
        record = {}
    kind = record.get("kind")
    if kind in ("checkpoint", "seal"):
        msgid, severity = str(kind), _INFO
    else:
        msgid, severity = "decision", _SEVERITY.get(str(record.get("result")), _WARNING)
    stamp = record.get("time")
    # RFC 5424 section 6.2.3: a time we cannot vouch for is the NILVALUE.
    timestamp = stamp if isinstance(stamp, str) and _TIMESTAMP.fullmatch(stamp) else "-"
    header = f"<{facility * 8 + severity}>1 {timestamp} {hostname} gateway {procid} {msgid} - "
    return header.encode() + line


_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z")


def _hostname(name: str) -> str:
    cleaned = _NOT_PRINTABLE.sub("", name)[:255]
    return cleaned or "-"


class SyslogSink:
    """RFC 5424 over TLS with octet counting (RFC 5425)."""

    name = "syslog"

    def __init__(self, settings: SyslogSettings) -> None:
        self.settings = settings
        self._hostname = _hostname(settings.hostname or socket.gethostname())
        self._socket: ssl.SSLSocket | None = None

    def _connect(self) -> ssl.SSLSocket:
        if self._socket is None:
            settings = self.settings
            raw = socket.create_connection((settings.host, settings.port), timeout=settings.timeout)
            try:
                self._socket = settings.context.wrap_socket(
                    raw, server_hostname=settings.server_name
                )
            except BaseException:
                raw.close()
                raise
            self._socket.settimeout(settings.timeout)
        return self._socket

    def send(self, lines: Sequence[bytes]) -> None:
        """Frame and send ``lines`` in one write."""
        procid = os.getpid()
        frames = []
        for line in lines:
            message = syslog_message(
                line, facility=self.settings.facility, hostname=self._hostname, procid=procid
            )
            frames.append(b"%d %s" % (len(message), message))
        self._connect().sendall(b"".join(frames))

    def close(self) -> None:
        """Close the TLS session (with close_notify when the peer still listens)."""
        sock, self._socket = self._socket, None
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                sock.unwrap()
            with contextlib.suppress(OSError):
                sock.close()


def build_exporters(
    loaded: LoadedConfig, *, on_drop: Callable[[str], None] | None = None
) -> list[Exporter]:
    """The exporters ``logging.export`` configures (not started). Standard output is skipped when
    the decision log itself goes there. Raises ``OSError``/``ssl.SSLError`` for unusable TLS
    files."""
    config = loaded.config
    settings = config.logging.export
    found: list[Exporter] = []
    if settings.stdout and config.logging.audit_file is not None:
        found.append(Exporter(StdoutSink(), capacity=settings.queue_size, on_drop=on_drop))
    syslog = settings.syslog
    if syslog is not None:
        files = (syslog.ca_file, syslog.client_certificate_file, syslog.client_key_file)
        ca, certificate, key = (loaded.resolve_path(f) if f else None for f in files)
        sink = SyslogSink(
            SyslogSettings(
                host=syslog.host,
                port=syslog.port,
                context=syslog_context(ca, certificate, key),
                server_name=syslog.server_name or syslog.host,
                facility=syslog.facility,
                timeout=syslog.timeout_seconds,
            )
        )
        found.append(Exporter(sink, capacity=settings.queue_size, on_drop=on_drop))
    return found
