"""Stream splicing: a relayed WebSocket on one side, a raw TCP connection on the other.

Used for tcp targets (LDAP, SQL, ...): the SaaS's binary WebSocket messages become bytes on the
TCP connection and bytes read from it become binary messages. Both directions apply backpressure
(a message is only read from one side once the previous one was written to the other), messages
are capped in size, the stream ends after ``idle_timeout`` seconds without traffic in either
direction, and whichever side ends first ends the other: a clean upstream close closes the relay
side with 1000, a failure with 1011 (RFC 6455 section 7.4.1). Every socket and task is released
on every path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from gateway.config.model import Target
from gateway.forward.dial import AddressPolicy, DialError, Redirect, Resolver, resolve_checked
from gateway.relay.handlers import StreamSocket

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_TOO_BIG = 1009
CLOSE_ERROR = 1011


@dataclass
class SpliceResult:
    """How a spliced stream ended, for metrics and the audit log."""

    reason: str
    bytes_up: int = 0
    bytes_down: int = 0


class _Activity:
    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


async def open_tcp(
    target: Target,
    *,
    resolver: Resolver,
    connect_timeout: float,
    redirect: Redirect | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the first reachable checked address of a tcp target (raises DialError)."""
    addresses = await resolve_checked(
        target, AddressPolicy.for_target(target), resolver, min(2.0, connect_timeout)
    )
    last_error = "no address"
    for address in addresses:
        host, port = (
            redirect(address, target.effective_port)
            if redirect
            else (
                str(address),
                target.effective_port,
            )
        )
        try:
            async with asyncio.timeout(connect_timeout):
                return await asyncio.open_connection(host, port, limit=READ_CHUNK)
        except TimeoutError:
            last_error = f"connect to {address} timed out"
        except OSError as exc:
            last_error = f"connect to {address} failed: {exc.strerror or exc}"
    raise DialError("upstream_unreachable", last_error)


async def splice(
    socket: StreamSocket,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    idle_timeout: float,
    max_message: int,
) -> SpliceResult:
    """Copy both ways until one side ends; closes both sides before returning."""
    result = SpliceResult(reason="closed")
    activity = _Activity()

    async def up() -> str:
        while True:
            message = await socket.receive()
            if message is None:
                return "client_closed"
            if isinstance(message, str):
                return "text_message"
            if len(message) > max_message:
                return "message_too_large"
            activity.touch()
            writer.write(message)
            await writer.drain()
            result.bytes_up += len(message)

    async def down() -> str:
        while True:
            chunk = await reader.read(READ_CHUNK)
            if not chunk:
                return "upstream_closed"
            activity.touch()
            await socket.send(chunk)
            result.bytes_down += len(chunk)

    async def idle() -> str:
        while True:
            remaining = activity.last + idle_timeout - time.monotonic()
            if remaining <= 0:
                return "idle_timeout"
            await asyncio.sleep(remaining)

    tasks = [asyncio.create_task(coro) for coro in (up(), down(), idle())]
    close_code = CLOSE_NORMAL
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finished = done.pop()
        try:
            result.reason = finished.result()
        except (ConnectionError, OSError) as exc:
            result.reason = "upstream_error"
            log.info("stream ended by a socket error: %s", exc, extra={"event": "stream_error"})
        close_code = {
            "text_message": CLOSE_UNSUPPORTED,
            "message_too_large": CLOSE_TOO_BIG,
            "upstream_error": CLOSE_ERROR,
        }.get(result.reason, CLOSE_NORMAL)
    except Exception as exc:  # any other failure still closes both ends, abnormally
        result.reason = "internal_error"
        close_code = CLOSE_ERROR
        log.warning("stream failed: %s", exc, extra={"event": "stream_error"})
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)
        with contextlib.suppress(Exception):
            await socket.close(close_code, result.reason)
    return result
