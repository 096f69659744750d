"""The decision (audit) log: one hash-chained JSON line per decision, to a file or standard output.

A full disk or a removed file must not stop the gateway from answering (the answer to the SaaS is
already decided), so write failures are counted and logged, never raised; the first record after
a failure reopens the file (log rotation by rename is handled the same way).

Durability: each record is serialised with orjson and handed to the operating system with a
``write()`` on an ``O_APPEND`` descriptor before the answer to the SaaS is sent. Nothing is held
in a user-space buffer past that answer, so a crash or kill of the gateway process loses no record
it has already answered for; only what the kernel had not yet written back when the machine itself
fails (power loss, kernel crash) can be lost, as there is no ``fsync`` per record. Records of
requests answered in the same turn of the event loop share one ``write()``
(:meth:`AuditLog.submit`): their answers wait for it, so this holds for each of them. No record
waits behind a timer: a process that dies with records not yet written has not answered for any.

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

import asyncio
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
# Records submitted in one turn of the event loop that wait to be written together, at most
# (:meth:`AuditLog.submit`): bounds the memory they hold and how far past ``rotate_bytes`` one
# write can take a file.
MAX_BATCH = 256
_NEWLINE = ord("\n")


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
        # Chained and not yet written (:meth:`submit`): the lines, their hashes, and the futures
        # of the requests whose answers wait for them.
        self._pending: list[bytes] = []
        self._hashes: list[str] = []
        self._waiters: list[asyncio.Future[None]] = []

    # --- the chain -------------------------------------------------------------------------------

    @property
    def head(self) -> tuple[int, str]:
        """The seq the next record gets and the hash it will carry as ``prev`` (records submitted
        and not yet written are written first)."""
        self._flush()
        self._restore()
        return self._seq, self._prev

    def write(self, record: dict[str, Any]) -> None:
        """Write one record as a line now (after any submitted before it); never raises for I/O
        problems.

        Raises ``ValueError`` for a record that names its own ``seq`` or ``prev``: its place in
        the chain is the log's to give."""
        if self._pending:
            self._chain(record)
            self._flush()
            return
        # Nothing waits (always so without submit): the record alone, without the batch's lists.
        line = self._line(record)
        if self._append_lines([line], [line_hash(line)]):
            self._wrote(1)

    def submit(self, record: dict[str, Any]) -> asyncio.Future[None]:
        """Give ``record`` its place in the chain now and write it with the other records
        submitted in the same turn of the event loop: one ``write()`` for all of them, at the
        start of the next turn. The returned future is done once the record was written (or
        could not be: a failure is counted and logged as for :meth:`write`); a request's answer
        waits for it, so the answer never leaves before its record. Raises ``ValueError`` as
        :meth:`write` does. Call it on one event loop's thread (the gateway's, for the life of
        the log).

        At most :data:`MAX_BATCH` records wait: the one that reaches it writes them all at once.
        A :meth:`write`, :meth:`checkpoint`, :meth:`rotate` or :meth:`close` writes the waiting
        records first, so lines are in the file in the order of their ``seq``."""
        self._chain(record)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        waiters = self._waiters
        if not waiters:
            loop.call_soon(self._flush_soon)
        waiters.append(waiter)
        if len(self._pending) >= MAX_BATCH:
            self._flush()
        return waiter

    def _chain(self, record: dict[str, Any]) -> None:
        """Serialise ``record`` at the next place in the chain, to be written by :meth:`_flush`."""
        line = self._line(record)
        self._pending.append(line)
        self._hashes.append(line_hash(line))

    def _line(self, record: dict[str, Any]) -> bytes:
        """``record`` serialised at the next place in the chain, after the records waiting."""
        if "seq" in record or "prev" in record:
            raise ValueError("a decision record cannot name its own place in the chain")
        if not self._restored:
            self._restore()
        pending = self._pending
        if pending:
            seq, prev = self._seq + len(pending), self._hashes[-1]
        else:
            seq, prev = self._seq, self._prev
        # The chain's fields are written in front of the record's own serialisation instead of
        # being merged into a copy of the record: the same bytes, one dictionary fewer per record.
        body = orjson.dumps(record, default=str)
        line = b'{"seq":%d,"prev":"%b"%b%b' % (
            seq,
            prev.encode(),
            b"," if len(body) > 2 else b"",
            body[1:],
        )
        return line

    def _flush_soon(self) -> None:
        """The event loop's turn for the submitted records (:meth:`submit`)."""
        try:
            self._flush()
        except Exception:  # an observer or a checkpoint failed: never the loop's problem
            log.exception("decision log flush failed", extra={"event": "audit_error"})

    def _flush(self) -> None:
        """Write every record chained and not yet written, with one ``write()``; then release
        whoever waits for them, whatever came of it."""
        lines = self._pending
        if not lines:
            return
        hashes, waiters = self._hashes, self._waiters
        self._pending, self._hashes = [], []
        if waiters:
            self._waiters = []
        try:
            written = self._append_lines(lines, hashes)
            if written:
                self._wrote(written)
        finally:
            for waiter in waiters:
                if not waiter.done():  # its request may have been cancelled meanwhile
                    waiter.set_result(None)

    def _wrote(self, count: int) -> None:
        """After ``count`` records were written: a checkpoint or a rotation when one is due."""
        self._since_checkpoint += count
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
        self._flush()
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
        """Write a record that carries its own ``seq`` and ``prev`` (a checkpoint, a seal) at
        the head of the chain; nothing is waiting to be written when it is called."""
        line = orjson.dumps(record, default=str)
        return self._append_lines([line], [line_hash(line)]) == 1

    def _append_lines(self, lines: list[bytes], hashes: list[str]) -> int:
        """Write ``lines`` (chained in this order, ``hashes`` theirs) and move the head past
        those written whole; the number of them."""
        written = self._write_lines(lines)
        if written:
            self._seq += written
            self._prev = hashes[written - 1]
            observers = self._observers
            if observers:
                for line in lines[:written]:
                    for observer in observers:
                        observer(line)
        return written

    def _write_lines(self, lines: list[bytes]) -> int:
        """Write ``lines``, each ended by a newline, with one ``write()`` (continued if short);
        the number written whole. Never raises for I/O problems: each line lost is a failure.

        A short write ends in the middle of a line when the disk fills or a file size limit is
        reached: the lines before it are in the file, that one is damaged (ended by the next
        write's newline, so the damage stays one line) and the rest are lost. The chain goes on
        from the last line written whole."""
        if len(lines) == 1:
            data = lines[0] + b"\n"
        else:
            lines.append(b"")  # the newline after the last line, in the same copy
            data = b"\n".join(lines)
            del lines[-1]
        if self.path is None:
            try:
                sys.stdout.write(data.decode())
                sys.stdout.flush()
            except OSError as exc:
                self._lost(len(lines), exc)
                return 0
            self.failing = False
            return len(lines)
        lead = done = 0
        try:
            fd = self._fd if self._fd is not None else self._descriptor(self.path)
            if self._partial:
                # A failed write left part of a line: end it so the damage stays one line
                # (verification reports it) and these records start lines of their own.
                data = b"\n" + data
                lead = 1
            done = os.write(fd, data)
            if done != len(data):
                view = memoryview(data)
                while 0 < done < len(data):
                    more = os.write(fd, view[done:])
                    if more <= 0:
                        break
                    done += more
                if done != len(data):
                    raise OSError(errno.ENOSPC, "no space left for the decision log")
        except OSError as exc:
            # What reached the file: the lines ended in it are whole, a line it stopped in is
            # the damaged one (the next write ends it), the rest are lost.
            if done:
                self._size += done
                self._partial = data[done - 1] != _NEWLINE
            whole = data.count(b"\n", lead, done)
            self._lost(len(lines) - whole, exc)
            return whole
        self._size += done
        self._partial = False
        self.failing = False
        return len(lines)

    def _lost(self, count: int, exc: OSError) -> None:
        """Count and log ``count`` lines that could not be written; reopen the file next time."""
        before = self.failures
        self.failures += count
        self.failing = True
        if self._on_failure is not None:
            for _ in range(count):
                self._on_failure()
        self._drop()
        if before == 0 or before // 1000 != self.failures // 1000:
            log.error(
                "decision log write failed (%d so far): %s",
                self.failures,
                exc.strerror or exc,
                extra={"event": "audit_write_failed"},
            )

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
        self._flush()
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
        self._flush()
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
