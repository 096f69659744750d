"""One keep-alive connection carries answer after answer (gateway.forward.http1): each is read
as its own message, nothing of one leaks into the next, and the pool's slots are neither lost nor
doubled when a waiting request is cancelled.

The parser that read one answer reads the next on the same connection (llhttp reads a
connection's messages in turn, RFC 9112 section 9.3); these tests hold every answer to what it
would be on a connection of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from gateway.forward.dial import DialStep
from gateway.forward.http1 import Exchange, Http1Pool, request_head
from gateway.forward.upstream import drain
from tests.integration.forward.test_http1 import OK, Scripted, always, get
from tests.integration.forward.test_upstream import Dialled, make_config, table
from tests.integration.relay.listener_support import wait_until

CHUNKED_WITH_TRAILER = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-First: 1\r\n\r\n"
    b"2\r\nok\r\n0\r\nX-Trailer: t\r\nX-Other: o\r\n\r\n"
)


async def test_a_trailer_of_one_answer_is_not_a_header_of_the_next() -> None:
    # RFC 9112 section 7.1.2: trailer fields belong to the chunked message they end; the next
    # answer on the connection has only its own header fields.
    replies = iter(
        [CHUNKED_WITH_TRAILER, b"HTTP/1.1 200 OK\r\nX-Second: 2\r\nContent-Length: 2\r\n\r\nok"]
    )
    scripted = Scripted(lambda head: next(replies))
    async with scripted as upstream:
        first = await upstream.send(
            "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
        )
        assert await drain(first) == b"ok"
        second = await upstream.send(
            "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
        )
        assert await drain(second) == b"ok"
    assert scripted.connections == 1
    assert first.headers == [("X-First", "1")]
    assert second.headers == [("X-Second", "2")]


async def test_an_answer_after_an_answer_to_head_is_read_with_its_body() -> None:
    # The answer to HEAD declares a body that never comes (RFC 9110 section 9.3.2): the next
    # answer on the connection is read from its status line, body and all.
    replies = iter([b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", OK, OK])
    scripted = Scripted(lambda head: next(replies))
    async with scripted as upstream:
        response = await upstream.send(
            "erp", method="HEAD", path="/api/x", query=None, headers=[], body=b""
        )
        assert (response.status, await drain(response)) == (200, b"")
        assert await get(upstream) == b"ok"
        assert await get(upstream) == b"ok"
    assert scripted.connections == 1


async def test_interim_and_final_answers_in_turn_on_one_connection() -> None:
    reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: </a>\r\n\r\n" + OK
    scripted = Scripted(always(reply))
    async with scripted as upstream:
        assert [await get(upstream) for _ in range(3)] == [b"ok"] * 3
    assert scripted.connections == 1


class Held(Scripted):
    """Answers OK to each request once ``go`` is set, and counts the requests it has read."""

    def __init__(self) -> None:
        super().__init__(always(OK))
        self.go = asyncio.Event()
        self.read = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                self.heads.append(await reader.readuntil(b"\r\n\r\n"))
                self.read += 1
                await self.go.wait()
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _exchange(pool: Http1Pool) -> Exchange:
    head = request_head("GET", "/api/x", [], b"", host="erp.corp.local:8443")
    assert head is not None
    return await pool.exchange(
        "erp",
        head,
        b"",
        method="GET",
        tls=None,
        server_name=None,
        connect=3.0,
        read=3.0,
        total=3.0,
    )


@asynccontextmanager
async def pool_of(server: Scripted, limit: int) -> AsyncIterator[Http1Pool]:
    """An exchange pool of ``limit`` slots whose every connection reaches ``server``."""
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    config = make_config()
    dial = DialStep(
        config.targets, resolver=table({"erp.corp.local": ["10.1.2.3"]}), redirect=Dialled(port)
    )
    pool = Http1Pool(dial, limit=limit)
    try:
        yield pool
    finally:
        await pool.close()
        listening.close()
        await listening.wait_closed()


async def drain_exchange(exchange: Exchange) -> None:
    assert await exchange.payload.read(100) == b"ok"
    exchange.release()
    exchange.release()  # a second release changes nothing


@pytest.mark.parametrize("handed_over", [False, True], ids=["while-waiting", "when-handed-one"])
async def test_a_cancelled_waiter_neither_keeps_nor_loses_a_slot(handed_over: bool) -> None:
    held = Held()
    async with pool_of(held, 1) as pool:
        first = asyncio.create_task(_exchange(pool))
        await wait_until(lambda: held.read == 1)
        cancelled = asyncio.create_task(_exchange(pool))
        waiting = asyncio.create_task(_exchange(pool))
        await asyncio.sleep(0.05)
        assert not cancelled.done()
        assert not waiting.done()
        held.go.set()
        exchange = await first
        if handed_over:
            # The slot goes to the first waiter, which is cancelled before it can run: the slot
            # must move on to the next one.
            exchange.release()
            cancelled.cancel()
        else:
            cancelled.cancel()
            await asyncio.sleep(0)
            exchange.release()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        async with asyncio.timeout(10):
            second = await waiting
        await drain_exchange(second)
        # One slot, free again: a further request runs at once, and only one connection was
        # ever open at a time.
        async with asyncio.timeout(10):
            third = await _exchange(pool)
        await drain_exchange(third)
    assert held.connections == 1
    assert held.read == 3


async def test_requests_beyond_the_limit_wait_their_turn_and_all_complete() -> None:
    scripted = Scripted(always(OK))

    async def one(pool: Http1Pool) -> None:
        await drain_exchange(await _exchange(pool))

    async with pool_of(scripted, 2) as pool, asyncio.timeout(30):
        await asyncio.gather(*(one(pool) for _ in range(12)))
    # Never more than two exchanges at once, so never more than two connections.
    assert len(scripted.heads) == 12
    assert scripted.connections <= 2
