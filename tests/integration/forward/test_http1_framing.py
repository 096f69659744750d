"""Response framing the forward's own checks add to llhttp's (gateway.forward.http1): a repeated
framing header, a transfer coding other than chunked, an answer to HEAD followed by stray bytes,
an oversize status line, and a head that never ends.

Each goes through a real loopback target (``Scripted``) and the real Upstream.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.forward.upstream import Upstream, UpstreamError, drain
from tests.integration.forward.test_http1 import OK, Scripted, always, get


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            "upstream_protocol_error",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n",
            "upstream_protocol_error",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok", "upstream_protocol_error"),
        (
            b"HTTP/1.1 200 " + b"K" * 9000 + b"\r\nContent-Length: 0\r\n\r\n",
            "upstream_headers_too_large",
        ),
        (
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-%d: " % i + b"v" * 8000 + b"\r\n" for i in range(300)),
            "upstream_headers_too_large",
        ),
    ],
    ids=["content-length-twice", "chunked-twice", "gzip-coding", "long-status", "endless-head"],
)
async def test_framing_the_parser_lets_through_is_refused(reply: bytes, code: str) -> None:
    scripted = Scripted(always(reply))
    async with scripted as upstream:
        with pytest.raises(UpstreamError) as caught:
            await get(upstream)
    assert (caught.value.code, caught.value.status) == (code, 502)


async def test_bytes_after_the_answer_to_head_retire_the_connection() -> None:
    # RFC 9110 section 9.3.2: the answer to HEAD ends with its head; what follows belongs to no
    # answer, so the connection is not used again (catalogue C 65).
    scripted = Scripted(always(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"))
    async with scripted as upstream:
        await head_twice(upstream)
    assert scripted.connections == 2


async def test_an_answer_split_in_single_bytes_is_read_and_pooled() -> None:
    # A head arriving one byte per segment (the HEAD cut spans reads) is still one clean answer.
    class Dripping(Scripted):
        async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                while True:
                    self.heads.append(await reader.readuntil(b"\r\n\r\n"))
                    for byte in b"HTTP/1.1 103 Early\r\n\r\n" + OK[:-2]:
                        writer.write(bytes([byte]))
                        await writer.drain()
            except (ConnectionError, EOFError):
                pass
            finally:
                writer.close()

    scripted = Dripping(always(OK))
    async with scripted as upstream:
        await head_twice(upstream)
    assert scripted.connections == 1


async def head_twice(upstream: Upstream) -> None:
    """Two HEAD requests, each answered 200 with no body."""
    for _ in range(2):
        response = await upstream.send(
            "erp", method="HEAD", path="/api/x", query=None, headers=[], body=b""
        )
        assert (response.status, await drain(response)) == (200, b"")


async def test_every_connection_field_of_the_final_answer_names_hop_headers() -> None:
    # RFC 9110 section 7.6.1: each Connection field lists names that describe this hop; two such
    # fields, any case and spacing, drop all they name. An interim 103's Connection field belongs
    # to that message only: it removes nothing from the final answer.
    reply = (
        b"HTTP/1.1 103 Early Hints\r\nConnection: X-Keep\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop-A\r\nX-Hop-A: 1\r\n"
        b"connection:  x-hop-b \r\nX-HOP-B: 2\r\nX-Keep: 3\r\nContent-Length: 2\r\n\r\nok"
    )
    async with Scripted(always(reply)) as upstream:
        response = await upstream.send(
            "erp", method="GET", path="/api/x", query=None, headers=[], body=b""
        )
        assert await drain(response) == b"ok"
    assert response.headers == [("X-Keep", "3")]
