"""The read (idle) timeout towards targets (catalogue I 138), against raw loopback servers.

A target that accepts and says nothing, or sends its headers and stalls, is a 504
``upstream_timeout`` after ``read_timeout_seconds``, long before the request timeout; a target
that keeps sending, however slowly, is ended by the request timeout instead (I 139). The
configuration rule that goes with it (an explicit read timeout is at most the request timeout) is
checked through the loader.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.config import load
from gateway.config.model import GatewayConfig
from gateway.errors import ConfigError
from gateway.forward import http1
from gateway.forward.upstream import Upstream, UpstreamError, drain
from tests.integration.forward.test_upstream import Dialled, table
from tests.unit.config.conftest import BASE

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
READ = 0.4
TOTAL = 1.5
# How long a test waits for what the read timeout must bring: far beyond it, so a busy machine
# cannot fail the test, and far below a timer left for anything later.
PATIENCE = 30.0


def config(read: float | None = READ, total: float = TOTAL) -> GatewayConfig:
    limits: dict[str, object] = {"request_timeout_seconds": total}
    if read is not None:
        limits["read_timeout_seconds"] = read
    return GatewayConfig.model_validate(
        {
            "version": 1,
            "gateway": {"id": "agent-1"},
            "empowerid": {"url": "https://tenant.example"},
            "limits": limits,
            "targets": {
                "erp": {
                    "scheme": "http",
                    "host": "erp.corp.local",
                    "port": 8080,
                    "allowed_cidrs": ["10.1.2.0/24"],
                    "operations": [{"name": "all", "methods": ["GET"], "paths": ["/api/**"]}],
                }
            },
        }
    )


async def _read_head(reader: asyncio.StreamReader) -> None:
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    await asyncio.sleep(10)


async def head_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    await writer.drain()
    await asyncio.sleep(10)


async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(READ / 4)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Behaviour], Awaitable[int]]]:
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()

    async def start(behaviour: Behaviour) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await behaviour(reader, writer)
            except (asyncio.CancelledError, ConnectionError):
                pass
            finally:
                writer.close()
                handlers.discard(task)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for task in list(handlers):
        task.cancel()
    for server in servers:
        server.close()
        await server.wait_closed()


async def _fetch(upstream: Upstream) -> bytes:
    try:
        response = await upstream.send(
            "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
        )
        return await drain(response)
    finally:
        await upstream.close()


def _upstream(cfg: GatewayConfig, port: int) -> Upstream:
    return Upstream(cfg, resolver=table({"erp.corp.local": ["10.1.2.3"]}), redirect=Dialled(port))


@pytest.mark.parametrize("behaviour", [silent, head_then_stall], ids=["silent", "head-then-stall"])
async def test_a_target_that_goes_quiet_is_504_after_the_read_timeout(
    serve: Callable[[Behaviour], Awaitable[int]], behaviour: Behaviour
) -> None:
    port = await serve(behaviour)
    started = time.monotonic()
    # The request timeout is the longest allowed, and the target hangs up after 10 s: a 504
    # `upstream_timeout` can only come from the read timeout, however slow the machine is.
    with pytest.raises(UpstreamError) as caught:
        await _fetch(_upstream(config(total=55), port))
    elapsed = time.monotonic() - started
    assert (caught.value.code, caught.value.status) == ("upstream_timeout", 504)
    assert elapsed >= READ * 0.9


async def test_a_dripping_target_is_ended_by_the_request_timeout(
    serve: Callable[[Behaviour], Awaitable[int]],
) -> None:
    # Every byte resets the read timeout, so only the total bound ends this one (catalogue I 139).
    port = await serve(drip)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        await _fetch(_upstream(config(), port))
    elapsed = time.monotonic() - started
    assert (caught.value.code, caught.value.status) == ("upstream_timeout", 504)
    assert elapsed >= TOTAL * 0.9


async def test_the_default_read_timeout_is_capped_at_a_shorter_request_timeout(
    serve: Callable[[Behaviour], Awaitable[int]],
) -> None:
    port = await serve(silent)
    with pytest.raises(UpstreamError) as caught:
        await _fetch(_upstream(config(read=None, total=0.5), port))
    # The silent target hangs up after 10 s, before the 15 s default read timeout: a timeout
    # (rather than the hang-up) shows that a bound no longer than the request's ended the wait,
    # however slow the machine is.
    assert (caught.value.code, caught.value.status) == ("upstream_timeout", 504)


def _problems(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    (tmp_path / "policies").mkdir(exist_ok=True)
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load(path, env={})
    except ConfigError as exc:
        return [(p.code, p.path) for p in exc.problems]
    return []


def test_an_explicit_read_timeout_longer_than_the_request_timeout_is_refused(
    tmp_path: Path,
) -> None:
    limits = "limits:\n  request_timeout_seconds: 10\n  read_timeout_seconds: 20\n"
    assert _problems(tmp_path, BASE + limits) == [
        ("conflicting_settings", "limits.read_timeout_seconds")
    ]
    # The default (15 s) with a shorter request timeout is fine: it is capped.
    assert _problems(tmp_path, BASE + "limits:\n  request_timeout_seconds: 10\n") == []
    target = BASE.replace(
        "    port: 8443\n",
        "    port: 8443\n    limits:\n      request_timeout_seconds: 5\n"
        "      read_timeout_seconds: 8\n",
    )
    assert _problems(tmp_path, target) == [
        ("conflicting_settings", "targets.erp.limits.read_timeout_seconds")
    ]
    within = target.replace("read_timeout_seconds: 8", "read_timeout_seconds: 4")
    assert _problems(tmp_path, within) == []


async def test_a_reused_connection_times_out_its_next_exchange_on_the_read_timeout(
    serve: Callable[[Behaviour], Awaitable[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A connection's one timer is moved only to an earlier time: idle, it waits for the end of
    # the keep-alive; the next exchange on it must bring it forward to that exchange's read
    # deadline. With the keep-alive far beyond the test's patience, a timer left at the idle
    # expiry would never end the stalled exchange in time.
    monkeypatch.setattr(http1, "KEEPALIVE_SECONDS", 1000.0)
    connections = 0

    async def answer_once_then_stall(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal connections
        connections += 1
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await _read_head(reader)
        await asyncio.sleep(60)

    upstream = _upstream(config(total=55), await serve(answer_once_then_stall))
    try:
        first = await upstream.send(
            "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
        )
        assert await drain(first) == b"ok"
        # Past the first exchange's read deadline, with the connection idle in the pool.
        await asyncio.sleep(READ * 2)
        with pytest.raises(UpstreamError) as caught:
            async with asyncio.timeout(PATIENCE):
                await upstream.send(
                    "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
                )
        assert (caught.value.code, caught.value.status) == ("upstream_timeout", 504)
        assert connections == 1  # the second exchange ran on the pooled connection
    finally:
        await upstream.close()


async def test_a_target_that_answers_without_reading_the_body_is_not_kept_open(
    serve: Callable[[Behaviour], Awaitable[int]],
) -> None:
    """A target that answers before taking the body (RFC 9110 section 15.5.14 allows a 413 at
    any point) and then stops reading: the connection, which still holds body bytes the target
    will never take, is reset rather than left waiting for it."""
    held: list[socket.socket] = []
    answered = asyncio.Event()

    async def answer_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        held.append(writer.get_extra_info("socket").dup())
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        answered.set()
        await asyncio.sleep(PATIENCE * 2)

    port = await serve(answer_early)
    upstream = _upstream(config(total=55), port)
    body = b"x" * (32 * 1024 * 1024)  # far more than both kernels' buffers hold
    try:
        response = await upstream.send(
            "erp", method="POST", path="/api/x", query=None, headers=[], body=body
        )
        await drain(response)
    except UpstreamError:
        pass  # the early answer may or may not be read before the write fails; either ends it
    try:
        await asyncio.wait_for(answered.wait(), PATIENCE)
        async with asyncio.timeout(PATIENCE):
            # The kernel announces no change of TCP state: it is looked at.
            while held[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await upstream.close()
        for connection in held:
            connection.close()
