"""Stream splicing: a relayed WebSocket on one side, an upstream connection on the other.

One splice serves both kinds of upstream, through the small :class:`UpstreamEnd` interface:

* a raw TCP connection (:class:`TcpEnd`, tcp targets such as LDAP or SQL): the SaaS's binary
  WebSocket messages become bytes on the connection and bytes read from it become binary
  messages; a text message cannot be carried and ends the stream with 1003;
* an upstream WebSocket (:class:`gateway.forward.websocket.UpstreamSocket`, http and https
  targets): messages pass one for one, text stays text and binary stays binary.

Both directions apply backpressure (a message is only read from one side once the previous one was
written to the other), messages are capped in size, the stream ends after ``idle_timeout`` seconds
without a data message in either direction, and whichever side ends first ends the other. Close
codes (RFC 6455 section 7.4.1): when the upstream closes with a close frame its code is passed to
the relay side (codes that may not be sent, section 7.4.2, become 1000 or 1011); an upstream that
vanishes without one, or fails, closes the relay side with 1011; an ending the gateway decides
(idle, oversize, text to a tcp target) closes both sides with the same code. Every socket and task
is released on every path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from gateway.config.model import Target
from gateway.forward.dial import DialStep, Guard, Redirect, Resolver, close_stream
from gateway.relay.handlers import StreamSocket

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_UNSUPPORTED = 1003
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_TOO_BIG = 1009
CLOSE_ERROR = 1011
CLOSE_TLS = 1015
# How long closing the upstream end may take before the connection is reset (a target that
# stopped reading would never take the bytes still buffered for it).
CLOSE_TIMEOUT = 2.0


@dataclass
class SpliceResult:
    """How a spliced stream ended, for metrics and the audit log."""

    reason: str
    bytes_up: int = 0
    bytes_down: int = 0
    close_code: int = CLOSE_NORMAL


class UpstreamEnd(Protocol):
    """The on-prem side of a splice, message by message."""

    @property
    def carries_text(self) -> bool:
        """Whether text messages can be sent to this end (a raw TCP connection cannot)."""
        ...

    async def receive(self) -> str | bytes | None:
        """The next message, or ``None`` once this end has ended (see :meth:`ending`)."""
        ...

    async def send(self, data: str | bytes) -> None:
        """Send one message, waiting while the peer is not reading (backpressure)."""
        ...

    def ending(self) -> tuple[str, int]:
        """Why :meth:`receive` returned ``None``: a reason code and the relay side's close code."""
        ...

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close and release the connection (idempotent, bounded in time, never raises)."""
        ...


def relay_close_code(code: int | None) -> int:
    """The close code to send the relay side for an upstream close frame carrying ``code``.

    RFC 6455 section 7.4.1/7.4.2: 1005 ("no status", also an empty close frame) means a normal
    close; 1006 and 1015 are never sent in a close frame and stand for a failed connection, so they
    become 1011, as does any code outside the ranges an endpoint may send (1000-1003, 1007-1014,
    3000-4999).
    """
    if code is None or code in (0, CLOSE_NO_STATUS):
        return CLOSE_NORMAL
    if code in (CLOSE_ABNORMAL, CLOSE_TLS):
        return CLOSE_ERROR
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return CLOSE_ERROR


class TcpEnd:
    """A raw TCP connection as an :class:`UpstreamEnd`: bytes in chunks, no text, no close codes."""

    carries_text = False

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def receive(self) -> bytes | None:
        """Up to :data:`READ_CHUNK` bytes, or ``None`` at end of stream."""
        chunk = await self._reader.read(READ_CHUNK)
        return chunk or None

    async def send(self, data: str | bytes) -> None:
        """Write ``data`` and wait until the transport has drained below its high-water mark."""
        self._writer.write(data.encode() if isinstance(data, str) else data)
        await self._writer.drain()

    def ending(self) -> tuple[str, int]:
        """The peer shut down its side (a FIN): a clean end."""
        return "upstream_closed", CLOSE_NORMAL

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close the connection; TCP has no close code."""
        await close_stream(self._writer, CLOSE_TIMEOUT)


async def open_tcp(
    target: Target,
    *,
    resolver: Resolver,
    connect_timeout: float,
    redirect: Redirect | None = None,
    guard: Guard | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the first reachable checked address of a tcp target, through the dial step
    (:meth:`gateway.forward.dial.DialStep.open_stream`); raises ``DialError``."""
    dial = DialStep(
        {target.host: target},
        resolver=resolver,
        timeout=min(2.0, connect_timeout),
        redirect=redirect,
        guard=guard,
    )
    return await dial.open_stream(target.host, connect_timeout=connect_timeout, limit=READ_CHUNK)


class _Activity:
    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


def _size(message: str | bytes) -> int:
    return len(message.encode()) if isinstance(message, str) else len(message)


async def relay(
    socket: StreamSocket,
    upstream: UpstreamEnd,
    *,
    idle_timeout: float,
    max_message: int,
    stop: asyncio.Future[tuple[str, int]] | None = None,
) -> SpliceResult:
    """Copy messages both ways until one side ends, or ``stop`` gives a reason and a close code
    (the gateway ends the stream: :meth:`gateway.pipeline.Pipeline.revise`); closes both sides
    before returning."""
    result = SpliceResult(reason="closed")
    activity = _Activity()

    async def up() -> tuple[str, int]:
        while True:
            try:
                message = await socket.receive()
            except (ConnectionError, OSError):
                return "relay_error", CLOSE_ERROR
            if message is None:
                return "client_closed", CLOSE_NORMAL
            if isinstance(message, str) and not upstream.carries_text:
                return "text_message", CLOSE_UNSUPPORTED
            size = _size(message)
            if size > max_message:
                return "message_too_large", CLOSE_TOO_BIG
            activity.touch()
            try:
                await upstream.send(message)
            except (ConnectionError, OSError):
                return "upstream_error", CLOSE_ERROR
            result.bytes_up += size

    async def down() -> tuple[str, int]:
        while True:
            try:
                message = await upstream.receive()
            except (ConnectionError, OSError):
                return "upstream_error", CLOSE_ERROR
            if message is None:
                return upstream.ending()
            activity.touch()
            try:
                await socket.send(message)
            except (ConnectionError, OSError):
                return "relay_error", CLOSE_ERROR
            result.bytes_down += _size(message)

    # The idle limit is a timer re-armed from the last activity, not a third task: a task, its
    # coroutine and its sleep cost about 1 KiB per open stream (issue 13, 1,000 streams).
    loop = asyncio.get_running_loop()
    idle: asyncio.Future[tuple[str, int]] = loop.create_future()
    timer: asyncio.TimerHandle | None = None

    def check_idle() -> None:
        nonlocal timer
        remaining = activity.last + idle_timeout - time.monotonic()
        if remaining <= 0:
            if not idle.done():
                idle.set_result(("idle_timeout", CLOSE_NORMAL))
            return
        timer = loop.call_later(remaining, check_idle)

    check_idle()
    tasks = [asyncio.create_task(coro) for coro in (up(), down())]
    try:
        waited: list[asyncio.Future[tuple[str, int]]] = [*tasks, idle]
        if stop is not None:
            waited.append(stop)
        done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        result.reason, result.close_code = done.pop().result()
    except Exception as exc:  # any other failure still closes both ends, abnormally
        result.reason, result.close_code = "internal_error", CLOSE_ERROR
        log.warning("stream failed: %s", exc, extra={"event": "stream_error"})
    finally:
        if timer is not None:
            timer.cancel()
        idle.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close(result.close_code, result.reason)
        with contextlib.suppress(Exception):
            await socket.close(result.close_code, result.reason)
    if result.close_code == CLOSE_ERROR:
        log.info("stream ended abnormally: %s", result.reason, extra={"event": "stream_error"})
    return result


async def splice(
    socket: StreamSocket,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    idle_timeout: float,
    max_message: int,
) -> SpliceResult:
    """Splice ``socket`` onto a raw TCP connection (:func:`relay` with a :class:`TcpEnd`)."""
    return await relay(
        socket, TcpEnd(reader, writer), idle_timeout=idle_timeout, max_message=max_message
    )
