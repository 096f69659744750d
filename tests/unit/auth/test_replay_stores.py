"""The shared replay stores against real backends: a SQLite file, a real ``redis-server``.

Each store must admit a nonce exactly once across every client that shares it (several
connections, several processes), keep the start barrier when it lost its memory, and fail closed
(``UNAVAILABLE``) while its server is down, recovering by itself once it is back.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
from pydantic import SecretStr

from gateway.auth.redisstore import RedisReplayStore
from gateway.auth.replay import Admission
from gateway.auth.replaystores import SqliteReplayStore, default_prefix
from gateway.config.model import RedisReplayStore as RedisSettings
from gateway.config.secrets import SecretRef, SecretSource
from tests.redisserver import PASSWORD, RedisServer

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


# --- Redis -------------------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def settings(server: RedisServer, **changes: object) -> RedisSettings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port,
        "tls": False,
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
) -> RedisReplayStore:
    source = SecretSource(
        SecretRef(env="REDIS_PASSWORD"),
        base_dir=server.directory,
        env={"REDIS_PASSWORD": password},
        initial=SecretStr(password),
    )
    return RedisReplayStore(
        settings(server, tls=server.tls),
        password=source,
        prefix=prefix,
        max_skew=SKEW,
        clock=clock,
        ca_file=ca_file,
    )


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[tuple[Clock, RedisReplayStore]]:
    clock = Clock()
    store = make_store(redis_server, clock)
    await store.initialise()
    yield clock, store
    await store.close()


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
    finally:
        await second.close()


async def test_redis_keys_expire_with_the_window_and_carry_the_prefix(
    redis_server: RedisServer, stores: tuple[Clock, RedisReplayStore]
) -> None:
    clock, store = stores
    assert await store.admit("k", "n", **window(clock, 0.3)) is Admission.ACCEPTED
    other_hc = make_store(redis_server, clock, prefix=default_prefix("hc-agent-2"))
    try:
        await other_hc.initialise()
        # Another Hybrid Connection's prefix is another memory.
        assert await other_hc.admit("k", "n", **window(clock)) is Admission.ACCEPTED
    finally:
        await other_hc.close()
    # Redis expires the key itself (PX); poll rather than assume a duration.
    for _ in range(200):
        if await store.admit("k", "n", **window(clock)) is Admission.ACCEPTED:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the nonce never expired")


async def test_redis_wrong_password_fails_closed(redis_server: RedisServer) -> None:
    clock = Clock()
    store = make_store(redis_server, clock, password="not-the-password")
    try:
        assert await store.admit("k", "n", **window(clock)) is Admission.UNAVAILABLE
    finally:
        await store.close()


async def test_redis_restart_fails_closed_then_recovers_by_itself(
    redis_server: RedisServer, stores: tuple[Clock, RedisReplayStore]
) -> None:
    clock, store = stores
    assert await store.admit("k", "before", **window(clock)) is Admission.ACCEPTED
    redis_server.stop()
    assert await store.admit("k", "during", **window(clock)) is Admission.UNAVAILABLE
    redis_server.start()
    # The same client, no intervention: it reconnects on its own.
    assert await store.admit("k", "after", **window(clock)) is Admission.ACCEPTED
    # The append-only file kept the nonce accepted before the restart.
    assert await store.admit("k", "before", **window(clock)) is Admission.REPLAY


async def test_redis_that_lost_its_memory_sets_a_start_barrier(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, persistent=False)
    server.start()
    clock = Clock()
    store = make_store(server, clock)
    try:
        await store.initialise()
        assert await store.admit("k", "n", **window(clock)) is Admission.ACCEPTED
        server.stop()
        server.start()
        # The nonce is gone with the server's memory; the barrier refuses its replay.
        assert await store.admit("k", "n", **window(clock)) is Admission.BEFORE_START
        assert await store.admit("k", "fresh", **window(clock)) is Admission.BEFORE_START
        clock.now += SKEW + 1
        assert await store.admit("k", "fresh", **window(clock)) is Admission.ACCEPTED
    finally:
        await store.close()
        server.stop()


async def test_redis_unreachable_fails_closed() -> None:
    server = RedisServer(Path("/nonexistent"))  # never started: nothing listens on its port
    clock = Clock()
    store = make_store(server, clock)
    try:
        assert await store.admit("k", "n", **window(clock)) is Admission.UNAVAILABLE
    finally:
        await store.close()


async def test_redis_over_tls_verifies_the_server(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, tls=True)
    server.start()
    clock = Clock()
    trusted = make_store(server, clock, ca_file=server.ca_file)
    # The same server, but its CA is not the one configured: the store must not talk to it.
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    untrusted = make_store(server, clock, ca_file=other_ca)
    try:
        await trusted.initialise()
        assert await trusted.admit("k", "n", **window(clock)) is Admission.ACCEPTED
        assert await trusted.admit("k", "n", **window(clock)) is Admission.REPLAY
        assert await untrusted.admit("k", "n2", **window(clock)) is Admission.UNAVAILABLE
    finally:
        await trusted.close()
        await untrusted.close()
        server.stop()


def test_the_default_store_never_imports_redis() -> None:
    """redis-py is loaded only by gateways configured for it (idle memory and start time)."""
    code = "import sys, gateway.service, gateway.diagnostics; print('redis' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"
