"""A recording on-prem target for the pipeline tests: a raw HTTP/1.1 server on 127.0.0.1.

It is deliberately not an HTTP framework: it records each request exactly as it arrived on the
wire (request line, header lines in order, body) and answers with whatever bytes the test scripts,
including responses no framework would produce (both ``Content-Length`` and
``Transfer-Encoding``, a bare CR in a header, ``101`` to a plain request, a drip, a reset) for
catalogue sections C 63-65 and I. Every connection serves one request and is then closed, so a
test's scripted behaviour is never bypassed by a pooled keep-alive connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024
READ_TIMEOUT = 5.0


@dataclass(frozen=True)
class Arrival:
    """One request as the target received it."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def names(self) -> set[str]:
        """Lower-cased header names."""
        return {name.lower() for name, _ in self.headers}

    def values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in arrival order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


Responder = Callable[[Arrival, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def response_bytes(
    status: int = 200,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    reason: str = "OK",
    *,
    framing: bool = True,
) -> bytes:
    """A raw HTTP/1.1 response; ``framing`` adds ``Content-Length`` and ``Connection: close``."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if framing:
        lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def fixed(raw: bytes) -> Responder:
    """A responder that writes ``raw`` and closes."""

    async def respond(
        arrival: Arrival, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(raw)
        await writer.drain()

    return respond


async def echo(
    arrival: Arrival, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """The default answer: 200 with a JSON description of what arrived."""
    body = json.dumps(
        {"target": arrival.target, "method": arrival.method, "received_bytes": len(arrival.body)}
    ).encode()
    writer.write(
        response_bytes(200, body, [("Content-Type", "application/json"), ("X-Target", "erp")])
    )
    await writer.drain()


@dataclass
class RecordingTarget:
    """The TLS (or plain) target; ``arrivals`` and ``connections`` are what a test asserts."""

    ssl_context: ssl.SSLContext | None = None
    responder: Responder = echo
    arrivals: list[Arrival] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def port(self) -> int:
        """The bound port."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def reset(self) -> None:
        """Forget what arrived and go back to the default answer."""
        self.arrivals.clear()
        self.connections = 0
        self.responder = echo

    async def start(self) -> None:
        """Listen on an ephemeral loopback port."""
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=self.ssl_context, limit=MAX_HEAD
        )

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()

    async def _closed(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(1):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                arrival = await _read_request(reader)
            if arrival is None:
                return
            self.arrivals.append(arrival)
            await self.responder(arrival, reader, writer)
        except (ConnectionError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            await self._closed(writer)


@dataclass
class KeepAliveTarget(RecordingTarget):
    """A target that keeps connections open between requests, like most servers, and closes a
    connection the moment a request for ``/api/drop...`` arrives on it, without answering: what a
    client sees when the server's idle timeout fires just as its request goes out on a pooled
    connection. Every request is recorded as it arrives, so a second copy shows in ``arrivals``.

    A request whose target is a key of ``scripted`` is answered with those bytes instead, and the
    connection stays open: whatever follows the bad response on the wire would be read as the
    next response by a client that pooled the connection again (catalogue C 63-65).
    """

    scripted: dict[str, bytes] = field(default_factory=dict)
    connection_of: dict[str, int] = field(default_factory=dict)
    """For each request target, the connection it last arrived on (numbered from 1, for ever)."""
    _opened: int = 0

    def reset(self) -> None:
        """Forget what arrived and every scripted answer."""
        super().reset()
        self.scripted.clear()
        self.connection_of.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._opened += 1
        number = self._opened
        self._writers.add(writer)
        try:
            while True:
                async with asyncio.timeout(READ_TIMEOUT):
                    arrival = await _read_request(reader)
                if arrival is None:
                    return
                self.arrivals.append(arrival)
                self.connection_of[arrival.target] = number
                if arrival.target.startswith("/api/drop"):
                    return
                kept = response_bytes(200, b"kept", [("Content-Length", "4")], framing=False)
                writer.write(self.scripted.get(arrival.target, kept))
                await writer.drain()
        except (ConnectionError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            await self._closed(writer)


async def _read_request(reader: asyncio.StreamReader) -> Arrival | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # a connection closed before a request (a refused TLS handshake, a probe)
    request_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    headers = tuple(
        (name, value.strip(" \t"))
        for name, _, value in (line.partition(":") for line in header_lines)
    )
    lengths = [value for name, value in headers if name.lower() == "content-length"]
    body = await reader.readexactly(int(lengths[0])) if lengths else b""
    return Arrival(method, target, headers, body)
