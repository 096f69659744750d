"""The SQLite replay store: nonces in one file shared by every process of a host.

One of the stores of :mod:`gateway.auth.replaystores` (which explains the start barrier and when
each store is used), in a module of its own so that a gateway with another store never imports
SQLite. Each admission is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired`` statement
inside a write transaction, so SQLite's write lock makes it atomic across processes;
``synchronous=FULL`` makes an accepted nonce survive a power loss, not only a crash. Admissions
that arrive while a transaction is being written share the next one (group commit: one fsync
for the batch).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.auth.replay import Admission
from gateway.auth.replaystores import ReplayStoreError, nonce_key

log = logging.getLogger("gateway.auth.replaystores")

# Purge expired rows (and recount the live ones) at least this often, in admissions.
_PURGE_EVERY: Final = 512

# The statements, each written once: opening a store and initialising a new one share the
# journal mode and the barrier table. WAL lets readers of other processes go on while one writes.
_WAL: Final = "PRAGMA journal_mode=WAL"
_DURABLE: Final = "PRAGMA synchronous=FULL"
_CREATE_NONCES: Final = (
    "CREATE TABLE IF NOT EXISTS nonce (k TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID"
)
_CREATE_META: Final = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value REAL)"
# Only the first process to find no barrier writes one.
_FIRST_BARRIER: Final = "INSERT OR IGNORE INTO meta VALUES ('barrier', ?)"
_NO_BARRIER: Final = "INSERT OR REPLACE INTO meta VALUES ('barrier', ?)"
_READ_BARRIER: Final = "SELECT value FROM meta WHERE name = 'barrier'"
_PURGE: Final = "DELETE FROM nonce WHERE expires <= ?"
_COUNT: Final = "SELECT count(*) FROM nonce"
# An expired row of the same key is replaced; a live one is left alone (rowcount 0).
_REMEMBER: Final = (
    "INSERT INTO nonce (k, expires) VALUES (?, ?) "
    "ON CONFLICT (k) DO UPDATE SET expires = excluded.expires WHERE nonce.expires <= ?"
)
_FORGET: Final = "DELETE FROM nonce WHERE k = ?"


@dataclass(slots=True)
class _Pending:
    """An admission waiting for the next SQLite batch."""

    key: str
    created: float
    expires: float
    future: asyncio.Future[Admission]


class SqliteReplayStore:
    """Nonces in a SQLite database in WAL mode, shared by every process that opens the file."""

    def __init__(
        self,
        path: Path,
        *,
        max_entries: int,
        max_skew: float,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (or create, mode 0600) the database at ``path``; raises ``ReplayStoreError``."""
        self._path = path
        self._max_entries = max_entries
        self._timeout = timeout
        self._clock = clock
        # sqlite3 connections belong to one thread: every statement runs on this one, off the
        # event loop (a busy database may make a statement wait up to the busy timeout).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-sqlite")
        self._since_purge = _PURGE_EVERY
        self._live = 0
        self._closed = False
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._problem: str | None = None
        try:
            self._db = self._thread.submit(self._connect, max_skew).result()
        except (sqlite3.Error, OSError) as exc:
            self._thread.shutdown()
            raise ReplayStoreError(f"cannot open the replay store {path}: {exc}") from None

    @property
    def description(self) -> str:
        """The file, for logs and ``gateway check``."""
        return f"sqlite {self._path}"

    @property
    def problem(self) -> str | None:
        """See :attr:`ReplayStore.problem`."""
        return self._problem

    def _connect(self, max_skew: float) -> sqlite3.Connection:
        # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the mode of
        # the database file, so no copy of a nonce is readable by others.
        os.close(os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        db = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)
        try:
            db.execute(_WAL)
            db.execute(_DURABLE)
            db.execute(_CREATE_NONCES)
            db.execute(_CREATE_META)
            db.execute(_FIRST_BARRIER, (self._clock() + max_skew,))
        except sqlite3.Error:
            db.close()
            raise
        return db

    @staticmethod
    def initialise(path: Path) -> None:
        """Create an empty store with no start barrier, for a Hybrid Connection that has never
        accepted a request (registration, demos)."""
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute(_WAL)
            db.execute(_CREATE_META)
            db.execute(_NO_BARRIER, (-1e300,))
        finally:
            db.close()

    def _admit(self, key: str, created: float, expires: float) -> Admission:
        db = self._db
        now = self._clock()
        (barrier,) = db.execute(_READ_BARRIER).fetchone()
        if created <= barrier:
            return Admission.BEFORE_START
        self._since_purge += 1
        if self._since_purge >= _PURGE_EVERY or self._live >= self._max_entries:
            db.execute(_PURGE, (now,))
            (self._live,) = db.execute(_COUNT).fetchone()
            self._since_purge = 0
        if expires <= now:
            return Admission.ACCEPTED  # its window has ended: nothing left to remember
        cursor = db.execute(_REMEMBER, (key, expires, now))
        if cursor.rowcount != 1:
            return Admission.REPLAY
        if self._live >= self._max_entries:
            # Bounded: the row just written is taken back rather than evicting a live one.
            db.execute(_FORGET, (key,))
            return Admission.FULL
        self._live += 1
        return Admission.ACCEPTED

    def _admit_batch(self, batch: list[tuple[str, float, float]]) -> list[Admission]:
        # Group commit: one transaction, so one fsync, for every admission that arrived while
        # the previous batch was being written. Nonces inside a batch meet each other in order.
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            results = [self._admit(key, created, expires) for key, created, expires in batch]
            db.execute("COMMIT")
        except BaseException:
            self._since_purge = _PURGE_EVERY  # the live count may be off: recount next time
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return results

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await loop.run_in_executor(
                        self._thread,
                        self._admit_batch,
                        [(item.key, item.created, item.expires) for item in batch],
                    )
                except (sqlite3.Error, OSError) as exc:
                    self._problem = f"the database did not answer: {type(exc).__name__}: {exc}"
                    log.error(
                        "replay store %s did not answer: %s",
                        self._path,
                        type(exc).__name__,
                        extra={"event": "replay_store_unavailable"},
                    )
                    results = [Admission.UNAVAILABLE] * len(batch)
                else:
                    self._problem = None
                for item, result in zip(batch, results, strict=True):
                    if not item.future.done():
                        item.future.set_result(result)
        finally:
            self._flusher = None

    async def admit(self, keyid: str, nonce: str, *, created: float, expires: float) -> Admission:
        """See :meth:`ReplayStore.admit`."""
        if self._closed:
            return Admission.CLOSED
        future: asyncio.Future[Admission] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(nonce_key(keyid, nonce), created, expires, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        try:
            # Shielded: a waiter that gives up must not cancel the batch of the others.
            async with asyncio.timeout(self._timeout * 2):
                return await asyncio.shield(future)
        except TimeoutError:
            self._problem = f"the database did not answer within {self._timeout * 2:g} s"
            log.error(
                "replay store %s did not answer within %g s",
                self._path,
                self._timeout * 2,
                extra={"event": "replay_store_unavailable"},
            )
            return Admission.UNAVAILABLE

    async def close(self) -> None:
        """Close the database (after any statement still running)."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await self._flusher
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._db.close)
        self._thread.shutdown()
