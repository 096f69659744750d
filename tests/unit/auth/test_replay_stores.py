"""The shared replay stores against real backends: a SQLite file, a real ``redis-server``.

Each store must admit a nonce exactly once across every client that shares it (several
connections, several processes), keep the start barrier when it lost its memory, and fail closed
(``UNAVAILABLE``) while its server is down, recovering by itself once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import trustme
from pydantic import SecretStr

from gateway.auth.redisstore import RedisReplayStore, marker_key
from gateway.auth.replay import Admission, ReplayCache, ReplayStore
from gateway.auth.replaystores import (
    ReplayStoreError,
    default_prefix,
    open_replay_store,
)
from gateway.auth.sqlitestore import SqliteReplayStore
from gateway.config.loader import LoadedConfig, load
from gateway.config.model import RedisReplayStore as RedisSettings
from gateway.config.secrets import SecretRef, SecretSource
from tests.redisserver import PASSWORD, RedisServer
from tests.unit.config.conftest import BASE

SKEW = 30.0


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def window(clock: Clock, seconds: float = 60) -> dict[str, float]:
    return {"created": clock.now, "expires": clock.now + seconds}


# --- SQLite ------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    path = tmp_path / "replay.sqlite3"
    SqliteReplayStore.initialise(path)
    return path


async def test_sqlite_admits_a_nonce_once_across_connections(sqlite_path: Path) -> None:
    clock = Clock()
    first = SqliteReplayStore(sqlite_path, max_entries=1000, max_skew=SKEW, clock=clock)
    second = SqliteReplayStore(sqlite_path, max_entries=1000, max_skew=SKEW, clock=clock)
    try:
        assert await first.admit("k", "n1", **window(clock)) is Admission.ACCEPTED
        assert await second.admit("k", "n1", **window(clock)) is Admission.REPLAY
        assert await first.admit("k", "n1", **window(clock)) is Admission.REPLAY
        # Same nonce under another key id, and the pair's parts cannot be shifted into a match.
        assert await second.admit("k2", "n1", **window(clock)) is Admission.ACCEPTED
        assert await second.admit("k:n", "1", **window(clock)) is Admission.ACCEPTED
    finally:
        await first.close()
        await second.close()
    mode = stat.S_IMODE(os.stat(sqlite_path).st_mode)
    assert mode & 0o077 == 0


async def test_sqlite_batches_concurrent_admissions_and_admits_each_nonce_once(
    sqlite_path: Path,
) -> None:
    clock = Clock()
    store = SqliteReplayStore(sqlite_path, max_entries=1000, max_skew=SKEW, clock=clock)
    try:
        # Concurrent admissions share transactions (group commit), same nonce included.
        results = await asyncio.gather(
            *(store.admit("k", f"n{i % 5}", **window(clock)) for i in range(50))
        )
        assert results.count(Admission.ACCEPTED) == 5
        assert results.count(Admission.REPLAY) == 45
    finally:
        await store.close()


async def test_sqlite_forgets_a_nonce_when_its_window_ends(sqlite_path: Path) -> None:
    clock = Clock()
    store = SqliteReplayStore(sqlite_path, max_entries=1000, max_skew=SKEW, clock=clock)
    try:
        first = window(clock, 5)
        assert await store.admit("k", "n", **first) is Admission.ACCEPTED
        clock.now += 4
        assert await store.admit("k", "n", **first) is Admission.REPLAY
        clock.now += 2
        assert await store.admit("k", "n", **window(clock, 5)) is Admission.ACCEPTED
    finally:
        await store.close()


async def test_sqlite_is_bounded_and_never_evicts_a_live_nonce(sqlite_path: Path) -> None:
    clock = Clock()
    store = SqliteReplayStore(sqlite_path, max_entries=3, max_skew=SKEW, clock=clock)
    try:
        for nonce in ("a", "b", "c"):
            assert await store.admit("k", nonce, **window(clock, 10)) is Admission.ACCEPTED
        assert await store.admit("k", "d", **window(clock, 10)) is Admission.FULL
        for nonce in ("a", "b", "c"):
            assert await store.admit("k", nonce, **window(clock, 10)) is Admission.REPLAY
        clock.now += 11
        assert await store.admit("k", "d", **window(clock, 10)) is Admission.ACCEPTED
    finally:
        await store.close()


async def test_a_new_sqlite_store_refuses_signatures_from_before_it(tmp_path: Path) -> None:
    # A missing file may be a deleted one that held live nonces: the start barrier applies.
    clock = Clock()
    store = SqliteReplayStore(tmp_path / "r.sqlite3", max_entries=100, max_skew=SKEW, clock=clock)
    try:
        assert await store.admit("k", "n", **window(clock)) is Admission.BEFORE_START
        clock.now += SKEW + 1
        assert await store.admit("k", "n", **window(clock)) is Admission.ACCEPTED
    finally:
        await store.close()


async def test_a_new_sqlite_store_refuses_up_to_its_barrier_exactly(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteReplayStore(tmp_path / "r.sqlite3", max_entries=100, max_skew=SKEW, clock=clock)
    barrier = clock.now + SKEW
    try:
        at = {"created": barrier, "expires": barrier + 60}
        assert await store.admit("k", "n", **at) is Admission.BEFORE_START
        after = {"created": barrier + 0.001, "expires": barrier + 60}
        assert await store.admit("k", "n", **after) is Admission.ACCEPTED
    finally:
        await store.close()


def rows(path: Path) -> int:
    """Nonce rows in the file, as any SQLite client sees them."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        (count,) = db.execute("SELECT count(*) FROM nonce").fetchone()
    return int(count)


async def test_sqlite_deletes_ended_windows_as_it_goes(sqlite_path: Path) -> None:
    # Disk is bounded by the live nonces, not by every nonce ever seen: rows whose window ended
    # are deleted at least every 512 admissions, full or not.
    clock = Clock()
    store = SqliteReplayStore(sqlite_path, max_entries=100_000, max_skew=SKEW, clock=clock)
    try:
        for batch in range(3):
            results = await asyncio.gather(
                *(store.admit("k", f"{batch}-{i}", **window(clock, 1)) for i in range(600))
            )
            assert set(results) == {Admission.ACCEPTED}
            clock.now += 2
    finally:
        await store.close()
    assert rows(sqlite_path) <= 1200


async def test_sqlite_store_file_is_in_wal_mode(sqlite_path: Path, tmp_path: Path) -> None:
    # WAL lets every process of the host read while one writes (the file keeps the mode).
    fresh = tmp_path / "fresh.sqlite3"
    store = SqliteReplayStore(fresh, max_entries=10, max_skew=SKEW)
    await store.close()
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o600
    for path in (sqlite_path, fresh):
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    # Created readable by the gateway's user only, like its -wal and -shm files after it.
    for name in ("fresh.sqlite3", "fresh.sqlite3-wal", "fresh.sqlite3-shm"):
        if (tmp_path / name).exists():
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) & 0o077 == 0, name


async def test_sqlite_store_never_follows_a_symbolic_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.sqlite3"
    link = tmp_path / "replay.sqlite3"
    link.symlink_to(elsewhere)
    with pytest.raises(ReplayStoreError, match="cannot open the replay store"):
        SqliteReplayStore(link, max_entries=10, max_skew=SKEW)
    with pytest.raises(OSError, match="link"):
        SqliteReplayStore.initialise(link)
    assert not elsewhere.exists()


async def test_a_damaged_sqlite_store_fails_closed(
    sqlite_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    store = SqliteReplayStore(sqlite_path, max_entries=100, max_skew=SKEW, clock=clock)
    try:
        assert await store.admit("k", "n1", **window(clock)) is Admission.ACCEPTED
        with contextlib.closing(sqlite3.connect(sqlite_path, isolation_level=None)) as db:
            db.execute("DROP TABLE nonce")
        results = await asyncio.gather(
            store.admit("k", "n2", **window(clock)), store.admit("k", "n3", **window(clock))
        )
        assert list(results) == [Admission.UNAVAILABLE] * 2
        assert store.problem == (
            "the database did not answer: OperationalError: no such table: nonce"
        )
        # The failed batch was rolled back and left the file unlocked: once repaired, it works.
        with contextlib.closing(
            sqlite3.connect(sqlite_path, timeout=10, isolation_level=None)
        ) as db:
            db.execute("CREATE TABLE nonce (k TEXT PRIMARY KEY, expires REAL NOT NULL)")
        assert await store.admit("k", "n2", **window(clock)) is Admission.ACCEPTED
        assert store.problem is None
    finally:
        await store.close()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"replay store {sqlite_path} did not answer: OperationalError"
    ]
    assert [getattr(r, "event", None) for r in errors] == ["replay_store_unavailable"]


async def test_a_locked_sqlite_store_fails_closed_and_recovers(
    sqlite_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    store = SqliteReplayStore(sqlite_path, max_entries=100, max_skew=SKEW, clock=clock)
    try:
        with contextlib.closing(sqlite3.connect(sqlite_path, isolation_level=None)) as db:
            db.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
            assert await store.admit("k", "n", **window(clock)) is Admission.UNAVAILABLE
            db.execute("ROLLBACK")
        assert await store.admit("k", "n2", **window(clock)) is Admission.ACCEPTED
        assert await store.admit("k", "n2", **window(clock)) is Admission.REPLAY
    finally:
        await store.close()
    # Whether the lock's busy timeout or the wait for it ends first, the operator is told.
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors
    assert all(str(sqlite_path) in r.getMessage() for r in errors)
    assert all(getattr(r, "event", None) == "replay_store_unavailable" for r in errors)


class StuckClock(Clock):
    """A clock that, once armed, holds the store's SQLite thread until released: the store is
    stuck as on a disk that stopped answering. It notes the name of the thread it held."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.release = threading.Event()
        self.held: list[str] = []

    def __call__(self) -> float:
        if self.armed and threading.current_thread() is not threading.main_thread():
            self.held.append(threading.current_thread().name)
            self.release.wait(60)
        return self.now


@pytest.mark.parametrize(("wait", "said"), [(0.1, "0.2"), (None, "2")])
async def test_a_stuck_sqlite_store_is_unavailable_within_twice_its_timeout(
    sqlite_path: Path, caplog: pytest.LogCaptureFixture, wait: float | None, said: str
) -> None:
    clock = StuckClock()
    chosen = {} if wait is None else {"timeout": wait}  # None: the default, 1 s
    store = SqliteReplayStore(sqlite_path, max_entries=100, max_skew=SKEW, clock=clock, **chosen)
    try:
        clock.armed = True
        async with asyncio.timeout(60):
            assert await store.admit("k", "n", **window(clock)) is Admission.UNAVAILABLE
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert [r.getMessage() for r in errors] == [
            f"replay store {sqlite_path} did not answer within {said} s"
        ]
        assert [getattr(r, "event", None) for r in errors] == ["replay_store_unavailable"]
        assert store.problem == f"the database did not answer within {said} s"
        # The thread it hung in is named for what it does (thread dumps, py-spy).
        assert clock.held == ["replay-sqlite_0"]
    finally:
        clock.release.set()
        await store.close()


class Ticking(Clock):
    """A clock one second later at every reading: each nonce's window has ended by the next."""

    def __call__(self) -> float:
        self.now += 1
        return self.now


async def admit_one_second(store: SqliteReplayStore, clock: Ticking, count: int) -> None:
    for i in range(count):
        # The store reads the clock once per admission, so it sees now + 1 < expires < now + 2.
        expires = clock.now + 1.5
        verdict = await store.admit("k", f"{clock.now}-{i}", created=clock.now, expires=expires)
        assert verdict is Admission.ACCEPTED


async def test_sqlite_purges_ended_windows_every_512_admissions(sqlite_path: Path) -> None:
    clock = Ticking()
    store = SqliteReplayStore(sqlite_path, max_entries=100_000, max_skew=SKEW, clock=clock)
    try:
        await admit_one_second(store, clock, 512)
        assert rows(sqlite_path) == 512  # purged before the first, not since
        await admit_one_second(store, clock, 1)
        assert rows(sqlite_path) == 1
        # A window that ends the moment it is admitted leaves nothing behind.
        verdict = await store.admit("k", "now", created=clock.now, expires=clock.now + 1)
        assert verdict is Admission.ACCEPTED
        assert rows(sqlite_path) == 1
    finally:
        await store.close()


async def test_sqlite_purges_early_only_when_it_is_full(sqlite_path: Path) -> None:
    clock = Ticking()
    store = SqliteReplayStore(sqlite_path, max_entries=100, max_skew=SKEW, clock=clock)
    try:
        await admit_one_second(store, clock, 99)
        assert rows(sqlite_path) == 99
        await admit_one_second(store, clock, 2)  # the 100th fills it: the 101st purges first
        assert rows(sqlite_path) == 1
    finally:
        await store.close()


async def test_a_closed_sqlite_store_admits_nothing(sqlite_path: Path) -> None:
    clock = Clock()
    store = SqliteReplayStore(sqlite_path, max_entries=100, max_skew=SKEW, clock=clock)
    assert store.description == f"sqlite {sqlite_path}"
    pending = asyncio.ensure_future(store.admit("k", "n", **window(clock)))
    await asyncio.sleep(0)
    await store.close()  # after the admission already under way
    assert await pending is Admission.ACCEPTED
    assert await store.admit("k", "n2", **window(clock)) is Admission.CLOSED
    await store.close()  # twice is harmless
    again = SqliteReplayStore(sqlite_path, max_entries=100, max_skew=SKEW, clock=clock)
    try:
        assert await again.admit("k", "n", **window(clock)) is Admission.REPLAY
    finally:
        await again.close()


def _admit_in_process(path: str, nonces: list[str], results: multiprocessing.Queue[str]) -> None:
    async def run() -> None:
        store = SqliteReplayStore(Path(path), max_entries=100_000, max_skew=SKEW)
        try:
            now = time.time()
            for nonce in nonces:
                admission = await store.admit("k", nonce, created=now, expires=now + 60)
                if admission is Admission.ACCEPTED:
                    results.put(nonce)
        finally:
            await store.close()

    asyncio.run(run())


def test_sqlite_admits_each_nonce_once_across_processes(sqlite_path: Path) -> None:
    nonces = [f"n{i}" for i in range(200)]
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[str] = context.Queue()
    workers = [
        context.Process(target=_admit_in_process, args=(str(sqlite_path), nonces, results))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    accepted = []
    while not results.empty():
        accepted.append(results.get())
    assert sorted(accepted) == sorted(nonces)


# --- Redis ------------------------------------------------------------------------------------
#
# One real redis-server serves every Redis test of this module (plain port and TLS port side by
# side); each test gets it back running, empty and with the default password, so a test costs
# what its admissions cost and not a server start. The mutation run relies on that.

# A store whose answer is expected to be "unavailable" waits at most this long (redis-py retries
# a refused connection until the store's timeout ends it); a store expected to answer keeps the
# generous default, so that a busy machine cannot turn an answer into a timeout.
FAILING_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), also_tls=True)
    server.start()
    yield server
    server.stop()


def admin(server: RedisServer, *, db: int = 0) -> redis.Redis:
    """A plain redis-py client of the test's own, to look at what the store wrote."""
    return redis.Redis(
        host="127.0.0.1", port=server.port, password=PASSWORD, db=db, socket_timeout=30
    )


@pytest.fixture
def redis_server(redis_process: RedisServer) -> RedisServer:
    if redis_process.process is None:  # a test stopped it and failed before starting it again
        redis_process.start()
    with admin(redis_process) as raw:
        raw.flushall()
        raw.script_flush()
        raw.config_resetstat()
        for user in raw.acl_users():
            if user != "default":
                raw.acl_deluser(user)
    return redis_process


def settings(server: RedisServer, **changes: object) -> RedisSettings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port,
        "tls": server.tls,
        "password": SecretRef(env="REDIS_PASSWORD"),
        "timeout_seconds": 2.0,
    }
    values.update(changes)
    return RedisSettings.model_validate(values)


def make_store(
    server: RedisServer,
    clock: Clock,
    *,
    prefix: str = "t:",
    password: str = PASSWORD,
    ca_file: Path | None = None,
    marker: str | None = None,
    claim_marker: bool = True,
    **changes: object,
) -> RedisReplayStore:
    source = SecretSource(
        SecretRef(env="REDIS_PASSWORD"),
        base_dir=server.directory,
        env={"REDIS_PASSWORD": password},
        initial=SecretStr(password),
    )
    return RedisReplayStore(
        settings(server, **changes),
        password=source,
        prefix=prefix,
        max_skew=SKEW,
        clock=clock,
        ca_file=ca_file,
        marker=marker,
        claim_marker=claim_marker,
    )


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[tuple[Clock, RedisReplayStore]]:
    clock = Clock()
    store = make_store(redis_server, clock)
    await store.initialise()
    yield clock, store
    await store.close()


def barrier(server: RedisServer, prefix: str = "t:") -> float | None:
    with admin(server) as raw:
        value = raw.get(prefix + "barrier")
    return None if value is None else float(value)


async def test_redis_admits_a_nonce_once_across_clients(
    redis_server: RedisServer, stores: tuple[Clock, RedisReplayStore]
) -> None:
    clock, first = stores
    second = make_store(redis_server, clock)
    try:
        results = await asyncio.gather(
            *(store.admit("k", "n1", **window(clock)) for store in (first, second) * 10)
        )
        assert results.count(Admission.ACCEPTED) == 1
        assert results.count(Admission.REPLAY) == 19
        assert await second.admit("k2", "n1", **window(clock)) is Admission.ACCEPTED
        # The pair's parts cannot be shifted into another pair's key.
        assert await second.admit("k:n", "1", **window(clock)) is Admission.ACCEPTED
        assert await second.admit("k", ":n1", **window(clock)) is Admission.ACCEPTED
    finally:
        await second.close()


async def test_a_burst_of_admissions_waits_for_the_stores_connections(
    redis_server: RedisServer,
) -> None:
    # More signed requests at once than the store keeps connections (64): each waits its turn,
    # within the timeout, instead of being answered 503 while Redis is healthy.
    clock = Clock()
    store = make_store(redis_server, clock, timeout_seconds=10.0)
    try:
        await store.initialise()
        results = await asyncio.gather(
            *(store.admit("k", f"n{i}", **window(clock)) for i in range(150))
        )
        assert set(results) == {Admission.ACCEPTED}
        with admin(redis_server) as raw:
            assert len(raw.client_list()) <= 64 + 1  # the store's, and this one
    finally:
        await store.close()


async def test_redis_keeps_a_nonce_under_the_prefix_for_its_window(
    redis_server: RedisServer, stores: tuple[Clock, RedisReplayStore]
) -> None:
    clock, store = stores
    assert await store.admit("k", "n", **window(clock, 60)) is Admission.ACCEPTED
    with admin(redis_server) as raw:
        assert sorted(raw.keys("*")) == [b"t:barrier", b"t:n:1:k:n"]
        # Remembered for the rest of the signature's window (PX in milliseconds), no longer.
        assert 30_000 < raw.pttl("t:n:1:k:n") <= 60_000
    other_hc = make_store(redis_server, clock, prefix=default_prefix("hc-agent-2"))
    try:
        await other_hc.initialise()
        # Another Hybrid Connection's prefix is another memory.
        assert await other_hc.admit("k", "n", **window(clock)) is Admission.ACCEPTED
    finally:
        await other_hc.close()
    with admin(redis_server) as raw:
        assert raw.exists("gateway:replay:{hc-agent-2}:n:1:k:n") == 1


async def test_redis_forgets_a_nonce_when_its_window_ends(
    stores: tuple[Clock, RedisReplayStore],
) -> None:
    clock, store = stores
    assert await store.admit("k", "n", **window(clock, 0.3)) is Admission.ACCEPTED
    # Redis expires the key itself (PX); poll rather than assume a duration.
    for _ in range(200):
        if await store.admit("k", "n", **window(clock)) is Admission.ACCEPTED:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the nonce never expired")


async def test_redis_admits_a_signature_whose_window_has_already_ended(
    redis_server: RedisServer, stores: tuple[Clock, RedisReplayStore]
) -> None:
    # Nothing is left to remember (the freshness check refuses it anyway), but the store answers
    # rather than failing on a time to live of zero.
    clock, store = stores
    ended = {"created": clock.now - 10, "expires": clock.now - 1}
    assert await store.admit("k", "old", **ended) is Admission.ACCEPTED
    with admin(redis_server) as raw:
        raw.set("t:barrier", repr(clock.now))
    assert await store.admit("k", "older", **ended) is Admission.BEFORE_START


async def test_redis_wrong_password_fails_closed(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    store = make_store(
        redis_server, clock, password="not-the-password", timeout_seconds=FAILING_TIMEOUT
    )
    try:
        assert await store.admit("k", "n", **window(clock)) is Admission.UNAVAILABLE
        assert await store.admit("k", "n2", **window(clock)) is Admission.UNAVAILABLE
        # What gateway check shows: the error, never the password.
        assert store.problem is not None
        assert store.problem.startswith(("AuthenticationError", "TimeoutError"))
        assert "not-the-password" not in store.problem
    finally:
        await store.close()
    # Said once, naming the server and the prefix (and the error's type), never the password.
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert re.fullmatch(
        rf"replay store redis://127\.0\.0\.1:{redis_server.port} prefix t: unavailable "
        r"\((?:AuthenticationError|TimeoutError)\): refusing signed requests until it answers",
        errors[0],
    )


@contextlib.contextmanager
def eviction(server: RedisServer, maxmemory: str, policy: str) -> Iterator[None]:
    """The server with these memory settings for the block, then back to the defaults."""
    with admin(server) as raw:
        raw.config_set("maxmemory", maxmemory)
        raw.config_set("maxmemory-policy", policy)
    try:
        yield
    finally:
        with admin(server) as raw:
            raw.config_set("maxmemory", "0")
            raw.config_set("maxmemory-policy", "noeviction")


@pytest.mark.parametrize(
    "policy", ["volatile-lru", "allkeys-lru", "volatile-ttl", "allkeys-random"]
)
async def test_a_server_that_may_evict_nonces_admits_none(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    # A nonce is a key with an expiry: under memory pressure such a server forgets it, and the
    # captured request is accepted again (volatile-lru is a managed-service default).
    clock = Clock()
    with eviction(redis_server, "64mb", policy):
        store = make_store(redis_server, clock)
        try:
            await store.initialise()
            assert await store.admit("k", "n1", **window(clock)) is Admission.UNAVAILABLE
            assert await store.admit("k", "n2", **window(clock)) is Admission.UNAVAILABLE
            # What gateway check shows: why, and what setting ends it.
            assert store.problem is not None
            assert f"maxmemory-policy {policy} evicts nonces" in store.problem
            assert "maxmemory-policy noeviction" in store.problem
        finally:
            await store.close()
    with admin(redis_server) as raw:
        assert raw.keys("t:n:*") == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [getattr(r, "event", None) for r in errors] == ["replay_store_evicts"]
    assert f"maxmemory-policy {policy} evicts nonces" in errors[0].getMessage()


@pytest.mark.parametrize(("maxmemory", "policy"), [("0", "volatile-lru"), ("64mb", "noeviction")])
async def test_a_server_that_cannot_evict_admits_as_usual(
    redis_server: RedisServer, maxmemory: str, policy: str
) -> None:
    clock = Clock()
    with eviction(redis_server, maxmemory, policy):
        store = make_store(redis_server, clock)
        try:
            await store.initialise()
            assert await store.admit("k", "n1", **window(clock)) is Admission.ACCEPTED
            assert await store.admit("k", "n1", **window(clock)) is Admission.REPLAY
            assert store.problem is None
        finally:
            await store.close()


async def test_a_server_that_will_not_tell_whether_it_evicts_admits_none(
    redis_server: RedisServer,
) -> None:
    with admin(redis_server) as raw:
        raw.acl_setuser(
            "narrow",
            enabled=True,
            passwords=["+narrow-secret"],
            keys=["t:*"],
            commands=["+@all", "-info"],
        )
    clock = Clock()
    store = make_store(redis_server, clock, password="narrow-secret", username="narrow")
    try:
        assert await store.admit("k", "n1", **window(clock)) is Admission.UNAVAILABLE
        assert store.problem is not None
        assert store.problem.startswith("it refuses INFO")
    finally:
        await store.close()


async def test_redis_user_and_password_both_count(redis_server: RedisServer) -> None:
    with admin(redis_server) as raw:
        raw.acl_setuser(
            "gateway", enabled=True, passwords=["+gateway-secret"], keys=["t:*"], commands=["+@all"]
        )
    clock = Clock()
    user = make_store(redis_server, clock, password="gateway-secret", username="gateway")
    wrong = make_store(redis_server, clock, username="gateway", timeout_seconds=FAILING_TIMEOUT)
    try:
        await user.initialise()
        assert await user.admit("k", "n", **window(clock)) is Admission.ACCEPTED
        assert await user.admit("k", "n", **window(clock)) is Admission.REPLAY
        # The default user's password does not open the named user.
        assert await wrong.admit("k", "n2", **window(clock)) is Admission.UNAVAILABLE
    finally:
        await user.close()
        await wrong.close()


def file_password_store(
    server: RedisServer, directory: Path, clock: Clock
) -> tuple[Path, RedisReplayStore]:
    """A store whose password is a file reference (as a rotated secret would be)."""
    secret = directory / "redis-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    ref = SecretRef(file=str(secret))
    store = RedisReplayStore(
        settings(server, password=ref),
        password=SecretSource(ref, base_dir=directory),
        prefix="t:",
        max_skew=SKEW,
        clock=clock,
    )
    return secret, store


async def test_redis_uses_a_rotated_password_from_the_next_connection(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    clock = Clock()
    secret, store = file_password_store(redis_server, tmp_path, clock)
    try:
        await store.initialise()
        assert await store.admit("k", "n1", **window(clock)) is Admission.ACCEPTED
        with admin(redis_server) as raw:
            raw.config_set("requirepass", "rotated-secret")
            secret.write_text("rotated-secret\n")
            # Existing connections stay authenticated; the next ones must use the new secret.
            raw.client_kill_filter(_type="normal", skipme=True)
        assert await store.admit("k", "n2", **window(clock)) is Admission.ACCEPTED
        assert await store.admit("k", "n1", **window(clock)) is Admission.REPLAY
    finally:
        await store.close()
        with redis.Redis(
            host="127.0.0.1", port=redis_server.port, password="rotated-secret"
        ) as raw:
            raw.config_set("requirepass", PASSWORD)


async def test_redis_fails_closed_when_its_password_can_no_longer_be_read(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A rotation that leaves the secret file unsafe must cost answers (503), not raise through
    # the request: the store is as unavailable as a server that refuses the password.
    clock = Clock()
    secret, store = file_password_store(redis_server, tmp_path, clock)
    try:
        await store.initialise()
        assert await store.admit("k", "n1", **window(clock)) is Admission.ACCEPTED
        secret.chmod(0o644)
        with admin(redis_server) as raw:
            raw.client_kill_filter(_type="normal", skipme=True)
        assert await store.admit("k", "n2", **window(clock)) is Admission.UNAVAILABLE
        secret.chmod(0o600)
        assert await store.admit("k", "n2", **window(clock)) is Admission.ACCEPTED
    finally:
        await store.close()
    assert [r.levelname for r in caplog.records if r.name.startswith("gateway")] == [
        "ERROR",
        "WARNING",
    ]
    assert PASSWORD not in caplog.text


async def test_redis_keeps_its_nonces_in_the_configured_database(
    redis_server: RedisServer,
) -> None:
    clock = Clock()
    store = make_store(redis_server, clock, database=5)
    try:
        await store.initialise()
        assert await store.admit("k", "n", **window(clock)) is Admission.ACCEPTED
    finally:
        await store.close()
    with admin(redis_server, db=5) as raw:
        assert raw.exists("t:n:1:k:n") == 1
    with admin(redis_server) as raw:
        assert raw.keys("*") == []


async def test_redis_restart_fails_closed_then_recovers_by_itself(
    redis_server: RedisServer,
    stores: tuple[Clock, RedisReplayStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, store = stores
    assert await store.admit("k", "before", **window(clock)) is Admission.ACCEPTED
    redis_server.stop()
    try:
        assert await store.admit("k", "during", **window(clock)) is Admission.UNAVAILABLE
    finally:
        redis_server.start()
    # The same client, no intervention: it reconnects on its own.
    assert await store.admit("k", "after", **window(clock)) is Admission.ACCEPTED
    # The append-only file kept the nonce accepted before the restart.
    assert await store.admit("k", "before", **window(clock)) is Admission.REPLAY
    # The operator reads one line when it goes and one when it comes back.
    records = [r for r in caplog.records if r.name.startswith("gateway")]
    where = f"redis://127.0.0.1:{redis_server.port} prefix t:"
    assert [(r.levelname, getattr(r, "event", None)) for r in records] == [
        ("ERROR", "replay_store_unavailable"),
        ("WARNING", "replay_store_recovered"),
    ]
    assert re.fullmatch(
        rf"replay store {re.escape(where)} unavailable \((?:ConnectionError|TimeoutError)\): "
        "refusing signed requests until it answers",
        records[0].getMessage(),
    )
    assert records[1].getMessage() == f"replay store {where} answers again"


async def test_redis_that_lost_its_memory_sets_a_start_barrier(
    redis_server: RedisServer, stores: tuple[Clock, RedisReplayStore]
) -> None:
    clock, store = stores
    assert await store.admit("k", "n", **window(clock)) is Admission.ACCEPTED
    with admin(redis_server) as raw:
        raw.flushall()  # what a restart without persistence leaves
    # The nonce is gone with the server's memory; the barrier refuses its replay.
    assert await store.admit("k", "n", **window(clock)) is Admission.BEFORE_START
    assert barrier(redis_server) == clock.now + SKEW
    assert await store.admit("k", "fresh", **window(clock)) is Admission.BEFORE_START
    clock.now += SKEW
    assert await store.admit("k", "fresh", **window(clock)) is Admission.BEFORE_START
    clock.now += 0.001
    assert await store.admit("k", "fresh", **window(clock)) is Admission.ACCEPTED
    # Writing the initial barrier again (a repeated registration) does not lower it.
    await store.initialise()
    assert barrier(redis_server) == clock.now - 0.001
    assert await store.admit("k", "old", created=clock.now - 1, expires=clock.now + 60) is (
        Admission.BEFORE_START
    )


class OtherGatewayFirst:
    """A clock for a store that finds no barrier, by which time another gateway has set one.

    Once the server has run the admission script (so the store has seen "no barrier") the next
    reading of the clock first writes the other gateway's barrier, as a gateway racing this one
    would between the script and this store's own write.
    """

    def __init__(self, server: RedisServer, other: float) -> None:
        self.now = time.time()
        self.server = server
        self.other = other

    def __call__(self) -> float:
        with admin(self.server) as raw:
            stats = raw.info("commandstats")
            ran = any(name in stats for name in ("cmdstat_evalsha", "cmdstat_eval"))
            if ran and raw.get("t:barrier") is None:
                raw.set("t:barrier", repr(self.other))
        return self.now


async def test_a_barrier_set_by_another_gateway_is_never_moved(redis_server: RedisServer) -> None:
    clock = OtherGatewayFirst(redis_server, other=time.time() - 1000)
    store = make_store(redis_server, clock)  # type: ignore[arg-type]
    try:
        assert await store.admit("k", "n", created=clock.now, expires=clock.now + 60) is (
            Admission.ACCEPTED
        )
    finally:
        await store.close()
    assert barrier(redis_server) == clock.other


async def test_redis_unreachable_fails_closed() -> None:
    # A port this test holds bound without listening: connections to it are refused, and no
    # other process can start listening there meanwhile.
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    server = RedisServer(Path("/nonexistent"), ports=[held.getsockname()[1]])  # never started
    clock = Clock()
    store = make_store(server, clock, timeout_seconds=FAILING_TIMEOUT)
    try:
        assert await store.admit("k", "n", **window(clock)) is Admission.UNAVAILABLE
        # Writing the initial barrier gives up within the timeout too.
        with pytest.raises(TimeoutError):
            await store.initialise()
    finally:
        await store.close()
        held.close()


async def test_redis_over_tls_verifies_the_server(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    clock = Clock()
    port = redis_server.tls_port
    trusted = make_store(redis_server, clock, ca_file=redis_server.ca_file, port=port, tls=True)
    # The same server, but its CA is not the one configured: the store must not talk to it.
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    untrusted = make_store(
        redis_server, clock, ca_file=other_ca, port=port, tls=True, timeout_seconds=FAILING_TIMEOUT
    )
    # Plain text to the TLS port is no way round it either.
    plain = make_store(redis_server, clock, port=port, timeout_seconds=FAILING_TIMEOUT)
    try:
        assert trusted.description == f"rediss://127.0.0.1:{port} prefix t:"
        await trusted.initialise()
        assert await trusted.admit("k", "n", **window(clock)) is Admission.ACCEPTED
        assert await trusted.admit("k", "n", **window(clock)) is Admission.REPLAY
        assert await untrusted.admit("k", "n2", **window(clock)) is Admission.UNAVAILABLE
        assert await plain.admit("k", "n3", **window(clock)) is Admission.UNAVAILABLE
    finally:
        await trusted.close()
        await untrusted.close()
        await plain.close()


async def test_redis_over_tls_without_a_ca_file_uses_the_system_trust_store(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenSSL's default verify paths honour SSL_CERT_FILE: here the system store is the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(redis_server.ca_file))
    clock = Clock()
    store = make_store(redis_server, clock, port=redis_server.tls_port, tls=True)
    try:
        await store.initialise()
        assert await store.admit("k", "n", **window(clock)) is Admission.ACCEPTED
    finally:
        await store.close()


async def test_a_closed_redis_store_admits_nothing(stores: tuple[Clock, RedisReplayStore]) -> None:
    clock, store = stores
    assert store.description.startswith("redis://127.0.0.1:")
    await store.close()
    assert await store.admit("k", "n", **window(clock)) is Admission.CLOSED


# --- The store gateway.yaml asks for ----------------------------------------------------------


def configured(tmp_path: Path, replay_store: str = "", *, skew: float = SKEW) -> LoadedConfig:
    """A minimal gateway.yaml in ``tmp_path/etc`` with this ``signatures.replay_store``."""
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    path = etc / "gateway.yaml"
    signatures = f"signatures:\n  clock_skew_seconds: {skew}\n  replay_cache_entries: 1000\n"
    if replay_store:
        signatures += "  replay_store:\n" + textwrap.indent(replay_store, "    ")
    path.write_text(BASE + signatures)
    return load(path, check_host=False, env={})


async def fill(store: ReplayStore, count: int) -> list[Admission]:
    """Admit ``count`` fresh nonces, in order, 100 in flight at a time: a store's waiters give up
    after their timeout (fail closed), and a thousand admissions queued at once on a loaded
    machine would test the machine's speed instead of the store's bound."""
    now = time.time()
    results: list[Admission] = []
    for start in range(0, count, 100):
        results += await asyncio.gather(
            *(
                store.admit("k", f"n{i}", created=now, expires=now + 60)
                for i in range(start, min(start + 100, count))
            )
        )
    return results


async def test_the_default_store_is_this_process_memory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    ReplayCache.initialise(state)
    store = open_replay_store(configured(tmp_path), state, "hc")
    now = time.time()
    try:
        assert store.description == "memory (this gateway process only)"
        assert await store.admit("k", "n", created=now, expires=now + 60) is Admission.ACCEPTED
        assert await store.admit("k", "n", created=now, expires=now + 60) is Admission.REPLAY
        # replay_cache_entries bounds it.
        results = await fill(store, 1000)
        assert results.count(Admission.ACCEPTED) == 999
        assert results[-1] is Admission.FULL
    finally:
        await store.close()
    # Closed cleanly, its nonces survive into the next process's memory.
    again = open_replay_store(configured(tmp_path), state, "hc")
    try:
        assert await again.admit("k", "n", created=now, expires=now + 60) is Admission.REPLAY
    finally:
        await again.close()


async def test_a_memory_store_without_clean_state_keeps_the_start_barrier(
    tmp_path: Path,
) -> None:
    # After a crash (no clean state), clock_skew_seconds decide how long it refuses signatures:
    # one made five seconds from now is refused with a 30 s skew, admitted with none.
    for skew, verdict in ((SKEW, Admission.BEFORE_START), (0, Admission.ACCEPTED)):
        state = tmp_path / f"state-{skew}"
        state.mkdir()
        store = open_replay_store(configured(tmp_path, skew=skew), state, "hc")
        created = time.time() + 5
        try:
            assert await store.admit("k", "n", created=created, expires=created + 60) is verdict
        finally:
            await store.close()


async def test_sqlite_store_in_the_state_directory_by_default(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store = open_replay_store(configured(tmp_path, "kind: sqlite"), state, "hc")
    try:
        assert store.description == f"sqlite {state / 'replay.sqlite3'}"
        now = time.time()
        # A new file starts with the barrier clock_skew_seconds ahead.
        assert await store.admit("k", "n", created=now, expires=now + 60) is (
            Admission.BEFORE_START
        )
    finally:
        await store.close()
    assert (state / "replay.sqlite3").is_file()


async def test_sqlite_store_at_a_path_relative_to_the_configuration(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (tmp_path / "etc").mkdir()
    SqliteReplayStore.initialise(tmp_path / "etc" / "nonces.db")
    loaded = configured(tmp_path, "kind: sqlite\nsqlite_path: nonces.db", skew=0)
    store = open_replay_store(loaded, state, "hc")
    try:
        assert store.description == f"sqlite {tmp_path / 'etc' / 'nonces.db'}"
        results = await fill(store, 1001)
        assert results.count(Admission.ACCEPTED) == 1000
        assert results[-1] is Admission.FULL
    finally:
        await store.close()


async def test_redis_store_as_configured(redis_server: RedisServer, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(redis_server.ca_file, etc / "redis-ca.pem")
    (etc / "redis-password").write_text(PASSWORD + "\n")
    (etc / "redis-password").chmod(0o600)
    # TLS with a CA file and the password from the environment, the default key prefix ...
    over_tls = (
        "kind: redis\n"
        "redis:\n"
        "  host: 127.0.0.1\n"
        f"  port: {redis_server.tls_port}\n"
        "  ca_file: redis-ca.pem\n"
        "  password: {env: REDIS_PASSWORD}\n"
    )
    default = open_replay_store(
        configured(tmp_path, over_tls), tmp_path, "hc-1", env={"REDIS_PASSWORD": PASSWORD}
    )
    # ... and plain text, a password file next to gateway.yaml, a key prefix of its own.
    plain = (
        "kind: redis\n"
        "redis:\n"
        "  host: 127.0.0.1\n"
        f"  port: {redis_server.port}\n"
        "  tls: false\n"
        "  password: {file: redis-password}\n"
        "  key_prefix: 'custom:'\n"
    )
    # (Another Hybrid Connection: one of the same would be refused for its other prefix.)
    named = open_replay_store(configured(tmp_path, plain, skew=0), tmp_path, "hc-2", env={})
    try:
        where = f"rediss://127.0.0.1:{redis_server.tls_port} prefix"
        assert default.description == f"{where} gateway:replay:{{hc-1}}:"
        assert named.description == f"redis://127.0.0.1:{redis_server.port} prefix custom:"
        # An empty store: each prefix gets its barrier, clock_skew_seconds ahead (30 s, none).
        created = time.time() + 5
        assert await default.admit("k", "n", created=created, expires=created + 60) is (
            Admission.BEFORE_START
        )
        assert await named.admit("k", "n", created=created, expires=created + 60) is (
            Admission.ACCEPTED
        )
        assert await named.admit("k", "n", created=created, expires=created + 60) is (
            Admission.REPLAY
        )
    finally:
        await default.close()
        await named.close()
    assert barrier(redis_server, "gateway:replay:{hc-1}:") == pytest.approx(created + SKEW, abs=10)
    with admin(redis_server) as raw:
        assert raw.get(marker_key("hc-1")) == b"gateway:replay:{hc-1}:"
        assert raw.get(marker_key("hc-2")) == b"custom:"


def test_a_redis_store_without_its_settings_refuses_to_open(tmp_path: Path) -> None:
    # validate refuses such a file first; this guard keeps a gateway from starting without
    # a replay memory if a configuration ever got past it.
    loaded = configured(tmp_path)
    signatures = loaded.config.signatures
    store = signatures.replay_store.model_copy(update={"kind": "redis", "redis": None})
    config = loaded.config.model_copy(
        update={"signatures": signatures.model_copy(update={"replay_store": store})}
    )
    broken = dataclasses.replace(loaded, config=config)
    with pytest.raises(ReplayStoreError, match=r"^signatures\.replay_store\.redis is missing$"):
        open_replay_store(broken, tmp_path, "hc")


def test_the_default_store_never_imports_redis() -> None:
    """redis-py is loaded only by gateways configured for it (idle memory and start time)."""
    code = "import sys, gateway.service, gateway.diagnostics; print('redis' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"


class ReplyDropper:
    """A loopback TCP proxy to the Redis server that cuts the first connection as the server's
    first integer reply (an admission's answer) comes back, without passing that reply on: the
    server recorded the nonce, the client never heard it did."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cut = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, up: bool) -> None:
            while chunk := await source.read(65536):
                if not up and self.cut == 0 and chunk.startswith(b":"):
                    self.cut += 1
                    writer.transport.abort()
                    up_writer.transport.abort()
                    return
                sink.write(chunk)
                await sink.drain()

        try:
            await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
            up_writer.transport.abort()


async def test_an_admission_whose_answer_was_lost_is_accepted_once_not_taken_for_a_replay(
    redis_server: RedisServer,
) -> None:
    # redis-py sends a command again after a lost connection (ten times by default). The server
    # had run the admission already: sent again, it found the nonce, and a request seen for the
    # first time was refused as a replay (401). The re-sent admission is the same acceptance.
    clock = Clock()
    seeded = make_store(redis_server, clock)
    await seeded.initialise()
    await seeded.close()
    proxy = ReplyDropper(redis_server.port)
    async with proxy as port:
        store = make_store(redis_server, clock, port=port, tls=False)
        try:
            first = await store.admit("k", "n1", **window(clock))
        finally:
            await store.close()
    assert (proxy.cut, proxy.connections) == (1, 2)  # the answer was lost, the command re-sent
    assert first is Admission.ACCEPTED
    # The server recorded it once: the next admission is the replay it really is.
    again = make_store(redis_server, clock)
    try:
        assert await again.admit("k", "n1", **window(clock)) is Admission.REPLAY
    finally:
        await again.close()


MARKER = marker_key("hc-agent-1")


async def test_gateways_of_one_hc_with_another_key_prefix_are_refused(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Two prefixes on one Hybrid Connection split the nonce memory: a request served by one side
    # would be accepted again by the other within its window.
    clock = Clock()
    first = make_store(redis_server, clock, prefix="a:", marker=MARKER)
    same = make_store(redis_server, clock, prefix="a:", marker=MARKER)
    other = make_store(redis_server, clock, prefix="b:", marker=MARKER)
    other_hc = make_store(redis_server, clock, prefix="c:", marker=marker_key("hc-agent-2"))
    for store in (first, other, other_hc):
        await store.initialise()
    try:
        assert await first.admit("k", "n1", **window(clock)) is Admission.ACCEPTED
        assert await same.admit("k", "n2", **window(clock)) is Admission.ACCEPTED
        assert await other.admit("k", "n1", **window(clock)) is Admission.UNAVAILABLE
        assert await other.admit("k", "n3", **window(clock)) is Admission.UNAVAILABLE
        assert await other_hc.admit("k", "n1", **window(clock)) is Admission.ACCEPTED
        assert await first.admit("k", "n1", **window(clock)) is Admission.REPLAY
        assert first.problem is None
        assert other.problem is not None
        assert "key prefix 'a:', this one under 'b:'" in other.problem
    finally:
        for store in (first, same, other, other_hc):
            await store.close()
    with admin(redis_server) as raw:
        assert raw.get(MARKER) == b"a:"
        assert 0 < raw.pttl(MARKER) <= 180_000
        assert raw.keys("b:n:*") == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [getattr(r, "event", None) for r in errors] == ["replay_store_prefix_conflict"]


async def test_a_check_reads_the_prefix_marker_without_claiming_it(
    redis_server: RedisServer,
) -> None:
    # gateway check with a mistaken prefix must not make the serving gateways refuse requests.
    clock = Clock()
    check = make_store(redis_server, clock, prefix="b:", marker=MARKER, claim_marker=False)
    serving = make_store(redis_server, clock, prefix="a:", marker=MARKER)
    late_check = make_store(redis_server, clock, prefix="b:", marker=MARKER, claim_marker=False)
    await check.initialise()
    await serving.initialise()
    try:
        assert await check.admit("k", "n1", **window(clock)) is Admission.ACCEPTED
        assert await serving.admit("k", "n1", **window(clock)) is Admission.ACCEPTED
        assert await late_check.admit("k", "n2", **window(clock)) is Admission.UNAVAILABLE
        assert late_check.problem is not None
        assert "'a:'" in late_check.problem
    finally:
        for store in (check, serving, late_check):
            await store.close()


async def test_a_user_that_may_not_read_the_marker_is_served_and_reported(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with admin(redis_server) as raw:
        raw.acl_setuser(
            "narrow", enabled=True, passwords=["+narrow-secret"], keys=["t:*"], commands=["+@all"]
        )
    clock = Clock()
    store = make_store(
        redis_server, clock, password="narrow-secret", username="narrow", marker=MARKER
    )
    await store.initialise()
    try:
        assert await store.admit("k", "n1", **window(clock)) is Admission.ACCEPTED
        assert store.problem is None
        assert store.marker_unchecked is not None
        assert "no permissions" in store.marker_unchecked
    finally:
        await store.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [getattr(r, "event", None) for r in warnings] == ["replay_store_prefix_unchecked"]
