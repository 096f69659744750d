"""The forward's own HTTP/1.1 exchange (gateway.forward.http1) against raw loopback servers.

Each server here writes exactly the bytes a test scripts, so the client's framing decisions are
visible: what it reuses, what it refuses, what it never sends twice (catalogue C 56-58, C 63-65,
I 140, I 147).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.forward.http1 import request_head
from gateway.forward.upstream import Upstream, UpstreamError, drain
from tests.integration.forward.test_upstream import Dialled, make_config, table

Answer = Callable[[bytes], bytes | None]


@dataclass
class Scripted:
    """A keep-alive server answering each request head with ``answer(head)`` (None: close)."""

    answer: Answer
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                reply = self.answer(head)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.upstream = Upstream(
            make_config(), resolver=table({"erp.corp.local": ["10.1.2.3"]}), redirect=Dialled(port)
        )
        return self.upstream

    async def __aexit__(self, *exc: object) -> None:
        await self.upstream.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def always(reply: bytes) -> Answer:
    return lambda head: reply


async def get(upstream: Upstream, path: str = "/api/x", method: str = "GET") -> bytes:
    response = await upstream.send(
        "erp", method=method, path=path, query=None, headers=[], body=b""
    )
    return await drain(response)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_a_clean_answer_leaves_its_connection_for_the_next_request() -> None:
    scripted = Scripted(always(OK))
    async with scripted as upstream:
        assert [await get(upstream) for _ in range(3)] == [b"ok"] * 3
    assert scripted.connections == 1


async def test_connection_close_in_the_answer_is_honoured() -> None:
    scripted = Scripted(
        always(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    )
    async with scripted as upstream:
        assert [await get(upstream) for _ in range(2)] == [b"ok"] * 2
    assert scripted.connections == 2


async def test_an_answer_framed_by_the_close_is_read_to_the_end_and_not_reused() -> None:
    # RFC 9112 section 6.3 rule 8: no Content-Length and no chunked coding: the body is
    # everything until the target closes.
    scripted = Scripted(lambda head: None)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        scripted.connections += 1
        scripted.heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    scripted.serve = serve  # type: ignore[method-assign]
    async with scripted as upstream:
        assert await get(upstream) == b"until the end"
        assert await get(upstream) == b"until the end"
    assert scripted.connections == 2


async def test_interim_answers_are_skipped_for_the_final_one() -> None:
    # RFC 9110 section 15.2: a 1xx answer is interim; the request is not sent again.
    scripted = Scripted(always(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK))
    async with scripted as upstream:
        assert await get(upstream) == b"ok"
    assert len(scripted.heads) == 1


async def test_an_answer_to_head_has_no_body_whatever_it_declares() -> None:
    scripted = Scripted(always(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"))
    async with scripted as upstream:
        response = await upstream.send(
            "erp", method="HEAD", path="/api/x", query=None, headers=[], body=b""
        )
        assert (response.status, await drain(response)) == (200, b"")
        second = await upstream.send(
            "erp", method="HEAD", path="/api/x", query=None, headers=[], body=b""
        )
        await drain(second)
    assert scripted.connections == 1


async def test_a_body_cut_short_is_an_error_and_the_connection_is_dropped() -> None:
    # Catalogue I 140: a truncated answer is never a complete-looking success.
    scripted = Scripted(always(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        scripted.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        writer.close()

    scripted.serve = serve  # type: ignore[method-assign]
    async with scripted as upstream:
        with pytest.raises(UpstreamError) as caught:
            await get(upstream)
    assert (caught.value.code, caught.value.status) == ("upstream_protocol_error", 502)


async def test_bytes_after_a_complete_answer_retire_the_connection() -> None:
    # Catalogue C 63-65: whatever follows an answer on the wire must never be read as the next
    # request's answer; the connection is not pooled again.
    scripted = Scripted(always(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforgd"))
    async with scripted as upstream:
        assert await get(upstream) == b"ok"
        await asyncio.sleep(0.05)
        assert await get(upstream) == b"ok"
    assert scripted.connections == 2


async def test_a_header_that_would_break_the_framing_is_never_sent() -> None:
    scripted = Scripted(always(OK))
    async with scripted as upstream:
        for value in ("a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b"):
            with pytest.raises(UpstreamError) as caught:
                await upstream.send(
                    "erp",
                    method="GET",
                    path="/api/x",
                    query=None,
                    headers=[("authorization", value)],
                    body=b"",
                )
            assert caught.value.code == "upstream_protocol_error"
    assert scripted.heads == []


async def test_the_request_head_is_exactly_what_was_judged() -> None:
    scripted = Scripted(always(OK))
    async with scripted as upstream:
        response = await upstream.send(
            "erp",
            method="POST",
            path="/api/a%2Fb",
            query="q=%20x&y",
            headers=[("Host", "evil.example"), ("content-type", "text/plain")],
            body=b"12345",
        )
        await drain(response)
        response = await upstream.send(
            "erp", method="POST", path="/api/empty", query=None, headers=[], body=b""
        )
        await drain(response)
    assert scripted.heads == [
        b"POST /api/a%2Fb?q=%20x&y HTTP/1.1\r\nhost: erp.corp.local:8443\r\n"
        b"content-type: text/plain\r\ncontent-length: 5\r\n\r\n",
        b"POST /api/empty HTTP/1.1\r\nhost: erp.corp.local:8443\r\ncontent-length: 0\r\n\r\n",
    ]


async def test_a_closed_idle_connection_is_replaced_before_anything_is_written() -> None:
    closing = Scripted(always(OK))
    async with closing as upstream:
        await get(upstream)
        # The server closes its side of the idle connection; the client notices the EOF
        # before its next request and opens a new connection instead of writing into it.
        for writer in closing.writers:
            writer.close()
        await asyncio.sleep(0.05)
        assert await get(upstream) == b"ok"
    assert closing.connections == 2
    assert len(closing.heads) == 2


_VISIBLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@given(
    name=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    value=_VISIBLE,
    breaker=st.sampled_from(["\r", "\n", "\r\n", "\x00"]),
    where=st.integers(min_value=0, max_value=40),
)
def test_request_head_refuses_every_line_break_or_nul(
    name: str, value: str, breaker: str, where: int
) -> None:
    cut = min(where, len(value))
    broken = value[:cut] + breaker + value[cut:]
    assert request_head("GET", "/x", [("host", "h"), (name, value)], b"") is not None
    assert request_head("GET", "/x", [("host", "h"), (name, broken)], b"") is None
    assert request_head("GET", "/x", [("host", "h"), (name + breaker, value)], b"") is None


def test_the_exchange_runs_on_uvloops_transports() -> None:
    # uvloop's transports implement asyncio's interface without subclassing asyncio.Transport;
    # the exchange must not depend on the class (it refused every connection once).
    uvloop = pytest.importorskip("uvloop")

    async def exchange() -> list[bytes]:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        scripted = Scripted(always(OK))
        async with scripted as upstream:
            return [await get(upstream) for _ in range(2)]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(exchange()) == [b"ok", b"ok"]
