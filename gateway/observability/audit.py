"""The decision (audit) log: one hash-chained JSON line per decision, to a file or standard output.

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

Tamper evidence (:mod:`gateway.observability.auditchain`): every line carries ``seq`` and
``prev``, the SHA-256 of the line before it, continued across restarts (the tail of the file, or
of the newest rotated file, is read at start) and across rotations. With a signer, a signed
``checkpoint`` is appended every ``checkpoint_seconds`` while records arrive, when the heartbeat
asks for the head, and at shutdown; a file being rotated ends with a signed ``seal``.

Rotation and retention: the file is renamed to ``NAME.YYYYMMDDTHHMMSSZ-SEQ`` once it reaches
``rotate_bytes`` or its first record is ``rotate_seconds`` old, and only the newest ``keep``
rotated files are kept. Renaming by an outside tool still works (the next write reopens the
path), and the chain continues in the new file.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import errno
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.config import LoadedConfig
from gateway.identity.keys import PrivateKey
from gateway.observability.auditchain import (
    CHECKPOINT_KINDS,
    GENESIS,
    ROTATED_SUFFIX,
    HeadSigner,
    HmacSigner,
    KeySigner,
    SignedHead,
    line_hash,
    read_tail,
    signed_message,
)
from gateway.policy.decision_log import RECORD_VERSION

log = logging.getLogger(__name__)

__all__ = ["AuditLog", "Rotation", "decision_log", "rotated_files", "worker_file"]

# Records hold bounded fields (paths, reasons), so a line is small; this bounds the read of a
# damaged tail at start-up, not the records.
_TAIL_WINDOW = 1 << 20


@dataclass(frozen=True)
class Rotation:
    """When to rotate the decision log file and how many rotated files to keep (0 = never)."""

    max_bytes: int = 0
    max_seconds: float = 0
    keep: int = 30
    checkpoint_seconds: float = 60.0


def rotated_files(path: Path) -> list[Path]:
    """The rotated files of ``path``, oldest first.

    Exactly ``NAME.YYYYMMDDTHHMMSSZ-SEQ``: the files of another chain whose name starts with
    ``NAME.`` (a worker's ``NAME.w2`` and its rotations) are not this file's, and retention must
    never delete them.
    """
    try:
        names = [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".")]
    except OSError:
        return []
    return sorted(p for p in names if ROTATED_SUFFIX.fullmatch(p.name[len(path.name) :]))


def worker_file(path: Path, worker: int | None) -> Path:
    """The decision log file of worker ``worker`` (``NAME.wN``), or ``path`` itself for a gateway
    that runs one process. Each worker keeps its own hash chain in its own file: one chain written
    by several processes would need a lock around every record to stay a chain."""
    return path if worker is None else path.with_name(f"{path.name}.w{worker}")


def _first_time(path: Path) -> float:
    """When the first record of ``path`` was written (now, if that cannot be read)."""
    try:
        with path.open("rb") as handle:
            first = orjson.loads(handle.readline(_TAIL_WINDOW))
        return dt.datetime.fromisoformat(first["time"]).timestamp()
    except (OSError, ValueError, TypeError, KeyError):
        return time.time()


def _utc(when: float) -> str:
    moment = dt.datetime.fromtimestamp(when, dt.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends chained records to ``path`` (created mode 0640), or to stdout when ``path`` is None.

    ``signer`` signs checkpoints (None: the chain only); ``observers`` receive every line written
    (the exporters, :mod:`gateway.observability.export`), and must not block. ``on_failure`` is
    called once per line that could not be written (the agent counts them in
    ``gateway_audit_write_failures_total``); ``failures`` holds the same count, and ``failing``
    says whether the latest line was lost. ``worker``: the index of the worker process whose
    chain this is (its checkpoints name and sign it, see
    :func:`gateway.observability.auditchain.signed_message`), ``None`` for one process.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        rotation: Rotation | None = None,
        signer: HeadSigner | None = None,
        gateway_id: str = "",
        clock: Callable[[], float] = time.time,
        observers: Sequence[Callable[[bytes], None]] = (),
        on_failure: Callable[[], None] | None = None,
        worker: int | None = None,
    ) -> None:
        self.path = path
        self.worker = worker
        self.failures = 0
        self.failing = False
        self._on_failure = on_failure
        self.rotation = rotation or Rotation()
        # Whether a record can make the file due for rotation (checked after every record).
        self._rotates = path is not None and bool(
            self.rotation.max_bytes or self.rotation.max_seconds
        )
        self._signer = signer
        self._gateway = gateway_id
        self._clock = clock
        self._observers = tuple(observers)
        self._fd: int | None = None
        self._restored = path is None
        self._seq = 0
        self._prev = GENESIS
        self._size = 0
        self._opened_at: float | None = None
        self._partial = False
        self._regular = False
        self._head: SignedHead | None = None
        self._last_checkpoint = clock()
        self._since_checkpoint = 0

    # --- the chain -------------------------------------------------------------------------------

    @property
    def head(self) -> tuple[int, str]:
        """The seq the next record gets and the hash it will carry as ``prev``."""
        self._restore()
        return self._seq, self._prev

    def write(self, record: dict[str, Any]) -> None:
        """Write one record as a line; never raises for I/O problems.

        Raises ``ValueError`` for a record that names its own ``seq`` or ``prev``: its place in
        the chain is the log's to give."""
        if "seq" in record or "prev" in record:
            raise ValueError("a decision record cannot name its own place in the chain")
        if not self._restored:
            self._restore()
        # The chain's fields are written in front of the record's own serialisation instead of
        # being merged into a copy of the record: the same bytes, one dictionary fewer per record.
        body = orjson.dumps(record, default=str)
        line = b'{"seq":%d,"prev":"%b"%b%b' % (
            self._seq,
            self._prev.encode(),
            b"," if len(body) > 2 else b"",
            body[1:],
        )
        if self._append_line(line):
            self._since_checkpoint += 1
            if (
                self._signer is not None
                and self._clock() - self._last_checkpoint >= self.rotation.checkpoint_seconds
            ):
                self.checkpoint()
            if self._rotates:
                self._maybe_rotate()

    def checkpoint(self) -> SignedHead | None:
        """Sign the head (writing a checkpoint if records came since the last); None unsigned."""
        if self._signer is None:
            return None
        self._restore()
        self._last_checkpoint = self._clock()
        if self._since_checkpoint or self._head is None:
            self._write_checkpoint("checkpoint")
        return self._head

    def _write_checkpoint(self, kind: str) -> bool:
        assert self._signer is not None
        seq, prev, now = self._seq, self._prev, _utc(self._clock())
        signature = self._signer.sign(
            signed_message(
                gateway=self._gateway, kind=kind, seq=seq, prev=prev, time=now, worker=self.worker
            )
        )
        encoded = base64.b64encode(signature).decode()
        record = {
            "seq": seq,
            "prev": prev,
            "v": RECORD_VERSION,
            "kind": kind,
            "time": now,
            "gateway": self._gateway,
            "alg": self._signer.alg,
            "key_id": self._signer.key_id,
            "signature": encoded,
        }
        if self.worker is not None:
            record["worker"] = self.worker
        if not self._append(record):
            return False
        self._since_checkpoint = 0
        self._head = SignedHead(seq, prev, now, self._signer.alg, self._signer.key_id, encoded)
        return True

    def _append(self, record: dict[str, Any]) -> bool:
        return self._append_line(orjson.dumps(record, default=str))

    def _append_line(self, line: bytes) -> bool:
        if self._write_line(line + b"\n"):
            self._seq += 1
            self._prev = line_hash(line)
            for observer in self._observers:
                observer(line)
            return True
        return False

    def _write_line(self, data: bytes) -> bool:
        try:
            if self.path is None:
                sys.stdout.write(data.decode())
                sys.stdout.flush()
                return True
            fd = self._fd if self._fd is not None else self._descriptor(self.path)
            partial = self._partial
            if partial:
                # A failed write left part of a line: end it so the damage stays one line
                # (verification reports it) and this record starts a line of its own.
                data = b"\n" + data
            written = os.write(fd, data)
            if written != len(data):
                self._write_rest(fd, data, written)
            elif partial:
                self._partial = False
            self._size += len(data)
            self.failing = False
            return True
        except OSError as exc:
            self.failures += 1
            self.failing = True
            if self._on_failure is not None:
                self._on_failure()
            self._drop()
            if self.failures == 1 or self.failures % 1000 == 0:
                log.error(
                    "decision log write failed (%d so far): %s",
                    self.failures,
                    exc.strerror or exc,
                    extra={"event": "audit_write_failed"},
                )
            return False

    def _write_rest(self, fd: int, data: bytes, written: int) -> None:
        """Continue a short write (a nearly full disk, a file size limit) where it stopped;
        raises OSError when no more can be written, leaving ``_partial`` set once part of the
        line is in the file."""
        view = memoryview(data)
        while True:
            if written <= 0:
                raise OSError(errno.ENOSPC, "no space left for the decision log")
            self._partial = True
            view = view[written:]
            if not view:
                break
            written = os.write(fd, view)
        self._partial = False

    # --- files -----------------------------------------------------------------------------------

    def _restore(self) -> None:
        """Continue the chain where the file (or the newest rotated one) ends; once."""
        if self._restored or self.path is None:
            return
        self._restored = True
        sources = [self.path, *reversed(rotated_files(self.path))]
        for source in sources:
            try:
                last, partial = read_tail(source, _TAIL_WINDOW)
            except OSError:
                continue
            if last is None and not partial:
                continue
            try:
                document = orjson.loads(last) if last is not None else None
            except orjson.JSONDecodeError:
                document = None
            seq = document.get("seq") if isinstance(document, dict) else None
            if not isinstance(document, dict) or not isinstance(seq, int):
                # Not a chained log (an older version, or damage we cannot link to): set it
                # aside rather than append a chain that would start in its middle.
                if source == self.path:
                    self._set_aside(source)
                    continue
                return
            self._seq, self._prev = seq + 1, line_hash(last or b"")
            self._partial = partial and source == self.path
            checkpointed = document.get("kind") in CHECKPOINT_KINDS
            self._since_checkpoint = 0 if checkpointed else 1
            return

    def _set_aside(self, path: Path) -> None:
        target = path.with_name(f"{path.name}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        target = target.with_name(target.name + "-" + "0" * 12)
        with contextlib.suppress(OSError):
            os.replace(path, target)
            log.warning(
                "decision log %s is not a chained log; moved to %s",
                path,
                target.name,
                extra={"event": "audit_set_aside"},
            )

    def _descriptor(self, path: Path) -> int:
        if self._fd is None:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            info = os.fstat(self._fd)
            # Only a regular file is rotated: a device or pipe (/dev/stdout) is never renamed.
            self._regular = stat.S_ISREG(info.st_mode)
            self._size = info.st_size
            if self._opened_at is None or info.st_size == 0:
                self._opened_at = _first_time(path) if info.st_size else self._clock()
        return self._fd

    def _maybe_rotate(self) -> None:
        rotation, path = self.rotation, self.path
        if path is None or self._fd is None or not self._regular:
            return
        by_size = rotation.max_bytes and self._size >= rotation.max_bytes
        opened = self._opened_at if self._opened_at is not None else self._clock()
        by_age = rotation.max_seconds and self._clock() - opened >= rotation.max_seconds
        if by_size or by_age:
            self.rotate()

    def rotate(self) -> None:
        """Seal the file, rename it aside and delete rotated files beyond ``keep``."""
        path = self.path
        if path is None:
            return
        self._restore()
        if self._signer is not None:
            if not self._write_checkpoint("seal"):
                return
        else:
            # Unsigned, the seal still marks the end of the file so that a cut is visible.
            if not self._append(
                {
                    "seq": self._seq,
                    "prev": self._prev,
                    "v": RECORD_VERSION,
                    "kind": "seal",
                    "time": _utc(self._clock()),
                    "gateway": self._gateway,
                    "alg": "none",
                    "key_id": "",
                    "signature": "",
                }
            ):
                return
            self._since_checkpoint = 0
        self._drop()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        target = path.with_name(f"{path.name}.{stamp}-{self._seq - 1:012d}")
        try:
            os.replace(path, target)
        except OSError as exc:
            log.error(
                "decision log rotation failed: %s",
                exc.strerror or exc,
                extra={"event": "audit_rotate_failed"},
            )
            return
        self._opened_at = None
        for old in rotated_files(path)[: -self.rotation.keep]:
            with contextlib.suppress(OSError):
                old.unlink()

    def _drop(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Write a final signed checkpoint (if records came since the last) and close the file;
        a later write reopens it and continues the chain."""
        if self._signer is not None and self._since_checkpoint:
            self._write_checkpoint("checkpoint")
        self._drop()


def decision_log(
    loaded: LoadedConfig,
    identity_key: PrivateKey,
    *,
    observers: Sequence[Callable[[bytes], None]] = (),
    on_failure: Callable[[], None] | None = None,
    worker: int | None = None,
) -> AuditLog:
    """The decision log ``loaded`` configures, its checkpoints signed with the HMAC key it
    names or else with ``identity_key``; ``worker``: the file of that worker process
    (:func:`worker_file`). Raises ``ValueError`` for a key that is too short."""
    config = loaded.config
    settings = config.logging.decision_log
    signer: HeadSigner
    if settings.hmac_key is not None:
        # Resolved (with the secret-file checks) when the configuration was loaded.
        key = loaded.secrets.get("logging.decision_log.hmac_key")
        if key is None:
            raise ValueError("logging.decision_log.hmac_key was not resolved")
        signer = HmacSigner(key.get_secret_value().encode())
    else:
        signer = KeySigner(identity_key)
    audit_file = config.logging.audit_file
    return AuditLog(
        worker_file(loaded.resolve_path(audit_file), worker) if audit_file else None,
        rotation=Rotation(
            max_bytes=settings.rotate_bytes,
            max_seconds=settings.rotate_seconds,
            keep=settings.keep,
            checkpoint_seconds=settings.checkpoint_seconds,
        ),
        signer=signer,
        gateway_id=config.gateway.id,
        observers=observers,
        on_failure=on_failure,
        worker=worker,
    )
