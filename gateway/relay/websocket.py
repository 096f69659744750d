"""One relay WebSocket: websockets' sans-IO client protocol on a connection this module owns.

The listener needs three things from a WebSocket client that aiohttp's public API does not give:
a response's JSON and body frames in one write, a streamed body as one fragmented binary message
(protocol notes section 5.3; RFC 6455 section 5.4), and a last response (413) before it closes
a socket whose message it refused for its size (catalogue item 150). The ``websockets``
library's sans-IO protocol (``websockets.client.ClientProtocol``) gives all three through its
public methods: it turns frames to send into bytes and bytes received into frames, and this
module moves the bytes. The connection comes from :func:`gateway.outbound.proxy.open_transport`,
so a relay socket reaches the internet exactly as before: direct, or through the configured
proxy's ``CONNECT`` tunnel, with TLS end to end.

The bytes are moved by an ``asyncio.Protocol`` (:class:`_Wire`): what arrives is fed to the
WebSocket protocol in ``data_received`` itself, and what the protocol queues in answer (pongs,
the close reply) is written there and then, without a task switch or a copy through a stream
buffer. Frames received are handed out as they arrive (``receive``), not reassembled: the
protocol core (:class:`gateway.hybridconnection.connection.ListenerConnection`) reads frames.
Reading pauses while more than :data:`_HIGH_WATER` bytes of frames wait for the application.

Outgoing bytes are coalesced per event-loop iteration: :meth:`RelayWebSocket.send` and
:meth:`RelayWebSocket.ping` only queue, and one ``call_soon`` flush writes everything queued in
that iteration with one ``write`` (one ``send()``), so the answers that many tasks finish in the
same iteration share a system call. Every byte still leaves in the order the protocol produced
it; a close, an end of the connection or more than :data:`_COALESCE_LIMIT` queued bytes write at
once, so backpressure (``drain``) never lags by more than that many bytes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Final, cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, InvalidURI, PayloadTooBig
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode as WsOpcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from gateway.hybridconnection.framing import Frame, Opcode
from gateway.outbound.proxy import OutboundProxy, open_transport

__all__ = [
    "TOO_LARGE",
    "HandshakeRefusedError",
    "RelaySocketError",
    "RelayWebSocket",
    "TooLarge",
    "open_relay_socket",
]

log = logging.getLogger("gateway.relay.websocket")


class _NoWireLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The protocol's logger, with its DEBUG wire trace always off.

    websockets logs every handshake header at DEBUG, and the listen handshake carries the SAS
    token in ``ServiceBusAuthorization``: secrets never reach a log, whatever level is set.
    """

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's own method name
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_PROTOCOL_LOG: Final = _NoWireLog(log, {})

# Reading pauses while this many payload bytes of received frames wait for the application.
_HIGH_WATER: Final = 1024 * 1024
_MAX_CLOSE_REASON: Final = 120
# Queued outgoing bytes past which a send writes at once instead of waiting for the flush: keeps
# what drain() cannot see bounded, and large bodies streaming as before.
_COALESCE_LIMIT: Final = 64 * 1024


class RelaySocketError(Exception):
    """The WebSocket could not be opened (bad URL, failed handshake) or is no longer open."""


class HandshakeRefusedError(RelaySocketError):
    """The server answered the opening handshake with ``status`` (and ``reason``), not 101."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"WebSocket handshake refused with {status}")
        self.status = status
        self.reason = reason


class TooLarge:
    """Marker in :meth:`RelayWebSocket.receive`'s result: a message exceeded ``max_size``.

    The protocol has refused the message from its frame header (nothing of it was buffered) and
    queued a close with 1009; :meth:`RelayWebSocket.close_after` can still put a last answer
    before that close.
    """


TOO_LARGE: Final = TooLarge()


_OUT_OPCODES: Final = {
    Opcode.TEXT: WsOpcode.TEXT,
    Opcode.BINARY: WsOpcode.BINARY,
    Opcode.CONTINUATION: WsOpcode.CONT,
}


async def open_relay_socket(
    url: str,
    proxy: OutboundProxy,
    *,
    handshake_timeout: float,
    max_size: int,
    close_timeout: float,
    headers: Mapping[str, str] | None = None,
    subprotocols: Iterable[str] = (),
) -> RelayWebSocket:
    """Connect (through ``proxy``'s decision for ``url``) and complete the opening handshake.

    ``max_size`` bounds one incoming message; compression is never offered (section 9).
    Raises :class:`HandshakeRefusedError` for a non-101 answer, :class:`RelaySocketError` for
    another handshake failure, the proxy's :class:`gateway.outbound.proxy.ProxyError`,
    ``OSError`` or ``TimeoutError``. The whole of it is bounded by ``handshake_timeout``.
    """
    try:
        uri = parse_uri(url)
    except InvalidURI:
        raise RelaySocketError("not a WebSocket URL") from None
    offered = [Subprotocol(name) for name in subprotocols]
    protocol = ClientProtocol(
        uri, subprotocols=offered or None, max_size=max_size, logger=_PROTOCOL_LOG
    )
    wire = _Wire(protocol)
    async with asyncio.timeout(handshake_timeout):
        await open_transport(proxy, url, wire, connect_timeout=handshake_timeout)
        socket = RelayWebSocket(wire, close_timeout=close_timeout)
        try:
            await socket.handshake(headers or {})
        except BaseException:
            socket.abort()
            raise
    return socket


class _Wire(asyncio.Protocol):
    """Moves bytes between an asyncio transport and the sans-IO WebSocket protocol."""

    def __init__(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol
        self.transport: asyncio.Transport | None = None
        self.frames: collections.deque[WsFrame | TooLarge] = collections.deque()
        self.buffered = 0
        self.response: Response | None = None
        self.held: list[bytes] = []
        self.too_large = False
        self.ended = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._paused_writing = False
        self._drainers: list[asyncio.Future[None]] = []
        # Bytes taken from the protocol but not yet written, and the flush that will write them.
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flush_handle: asyncio.Handle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not necessarily an asyncio.Transport subclass (uvloop's
        # implement the interface without deriving from it).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self._collect()

    def eof_received(self) -> bool:
        self.protocol.receive_eof()
        self._collect()
        self._end()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._drop_pending()
        self._end()
        if not self.lost.done():
            self.lost.set_result(None)
        for drainer in self._drainers:
            if not drainer.done():
                drainer.set_exception(ConnectionResetError("relay socket closed"))
        self._drainers.clear()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        for drainer in self._drainers:
            if not drainer.done():
                drainer.set_result(None)
        self._drainers.clear()

    # -- moving events and bytes -----------------------------------------------------------

    def _collect(self) -> None:
        protocol = self.protocol
        for event in protocol.events_received():
            if isinstance(event, WsFrame):
                self.frames.append(event)
                self.buffered += len(event.data)
            elif isinstance(event, Response):
                self.response = event
        if isinstance(protocol.parser_exc, PayloadTooBig) and not self.too_large:
            # The protocol refused a message from its frame header and queued its 1009 close;
            # hold that close so send_last() can put the answer to the refused request first.
            self.too_large = True
            self.held = protocol.data_to_send()
            self.frames.append(TOO_LARGE)
        else:
            # Pongs and the close reply join this iteration's writes (RFC 6455 5.5.3 asks for
            # a pong "as soon as is practical").
            self.queue()
        if self.buffered > _HIGH_WATER and not self._paused_reading and self.transport:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake()

    def queue(self) -> None:
        """Take what the protocol queued; write it with the others of this loop iteration."""
        chunks = self.protocol.data_to_send()
        if not chunks:
            return
        self._pending.extend(chunks)
        self._pending_size += sum(len(chunk) for chunk in chunks)
        if chunks[-1] == b"" or self._pending_size >= _COALESCE_LIMIT:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        self.flush()

    def flush(self, after: bytes = b"") -> None:
        """Write what is queued, what the protocol queued since, then ``after``: one write."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        chunks = self._pending
        chunks.extend(self.protocol.data_to_send())
        self._pending = []
        self._pending_size = 0
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if after:
            chunks.append(after)
        payload = b"".join(chunks)
        if payload:
            transport.write(payload)
        if b"" in chunks and transport.can_write_eof():
            # websockets' SEND_EOF: half-close after the closing handshake (RFC 6455 7.1.1);
            # it is the protocol's last output, so nothing queued follows it.
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()

    def _drop_pending(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending = []
        self._pending_size = 0

    def take(self) -> list[WsFrame | TooLarge]:
        """Every frame received so far (reading resumes once they are taken)."""
        frames = list(self.frames)
        self.frames.clear()
        self.buffered = 0
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        return frames

    async def wait(self) -> None:
        """Until a frame arrives or the connection ends."""
        if self.frames or self.ended:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("relay socket is closed")
        if not self._paused_writing:
            return
        drainer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drainers.append(drainer)
        await drainer

    def _end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class RelayWebSocket:
    """An open client WebSocket. One task reads (:meth:`receive`); any task may write.

    Writes are synchronous up to the transport (``send``, ``ping``): a sequence of them with no
    ``await`` between is written in that order with nothing in between; the caller orders whole
    messages (section 5.4) with its own lock and waits with :meth:`drain`.
    """

    def __init__(self, wire: _Wire, *, close_timeout: float) -> None:
        self._wire = wire
        self._protocol = wire.protocol
        self._close_timeout = close_timeout
        self._messages: collections.deque[WsFrame | TooLarge] = collections.deque()

    # -- opening -------------------------------------------------------------------------

    async def handshake(self, headers: Mapping[str, str]) -> None:
        """Send the upgrade request with ``headers`` added and wait for the answer."""
        protocol, wire = self._protocol, self._wire
        request = protocol.connect()
        for name, value in headers.items():
            request.headers[name] = value
        protocol.send_request(request)
        wire.flush()
        while True:
            failure = protocol.handshake_exc
            if isinstance(failure, InvalidStatus):
                response = failure.response
                raise HandshakeRefusedError(response.status_code, response.reason_phrase)
            if failure is not None:
                raise RelaySocketError(f"WebSocket handshake failed: {type(failure).__name__}")
            if wire.response is not None and protocol.state is not State.CONNECTING:
                return
            if wire.ended:
                raise RelaySocketError("connection closed during the WebSocket handshake")
            await wire.wait()

    # -- state ---------------------------------------------------------------------------

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose, if any."""
        return self._protocol.subprotocol

    @property
    def open(self) -> bool:
        """Whether data can still be sent."""
        transport = self._wire.transport
        return (
            self._protocol.state is State.OPEN
            and transport is not None
            and not transport.is_closing()
        )

    @property
    def close_code(self) -> int | None:
        """The code of the peer's close frame, once one arrived."""
        received = self._protocol.close_rcvd
        return None if received is None else int(received.code)

    @property
    def close_reason(self) -> str:
        """The reason text of the peer's close frame (empty if none)."""
        received = self._protocol.close_rcvd
        return "" if received is None else received.reason

    # -- reading -------------------------------------------------------------------------

    async def receive(self) -> list[WsFrame | TooLarge]:
        """The next frames (data and control), or ``[]`` once the connection has ended."""
        wire = self._wire
        if not wire.frames:
            if wire.ended:
                return []
            await wire.wait()
        return wire.take()

    async def receive_message(self) -> str | bytes | None:
        """The next whole data message (``str`` text, ``bytes`` binary); ``None`` once closed.

        Fragments are joined (bounded by ``max_size``, which the protocol enforces); a text
        message that is not UTF-8 closes the socket with 1007 (RFC 6455 section 8.1).
        """
        parts: list[bytes] = []
        text = False
        while True:
            while not self._messages:
                events = await self.receive()
                if not events:
                    return None
                self._messages.extend(events)
            event = self._messages.popleft()
            if isinstance(event, TooLarge) or event.opcode is WsOpcode.CLOSE:
                return None
            if event.opcode in (WsOpcode.TEXT, WsOpcode.BINARY):
                text = event.opcode is WsOpcode.TEXT
                parts = [bytes(event.data)]
            elif event.opcode is WsOpcode.CONT:
                parts.append(bytes(event.data))
            else:
                continue  # ping (answered by the protocol) or pong
            if not event.fin:
                continue
            data = b"".join(parts)
            if not text:
                return data
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                await self.close(1007)
                return None

    # -- writing -------------------------------------------------------------------------

    def send(self, frames: Iterable[Frame]) -> None:
        """Queue data frames (masked by the protocol, RFC 6455 section 5.3) for this loop
        iteration's write; frames sent with no ``await`` between stay together and in order."""
        if not self.open:
            raise ConnectionResetError("relay socket is closed")
        protocol = self._protocol
        for frame in frames:
            opcode = frame.opcode
            if opcode is Opcode.TEXT:
                protocol.send_text(frame.payload, fin=frame.fin)
            elif opcode is Opcode.BINARY:
                protocol.send_binary(frame.payload, fin=frame.fin)
            elif opcode is Opcode.CONTINUATION:
                protocol.send_continuation(frame.payload, fin=frame.fin)
            else:
                raise ValueError("only data frames are sent with send()")
        self._wire.queue()

    def ping(self, data: bytes) -> None:
        """Send a ping (section 3.3); nothing on a socket that is closing or closed.

        Never raises: a closed socket is the reader's news (it sees the close or the end of
        the connection), and a ping timer that fires in the same moment must not turn it into
        an error of its own.
        """
        if self.open:
            self._protocol.send_ping(data)
            self._wire.queue()

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        await self._wire.drain()

    # -- closing -------------------------------------------------------------------------

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code``; wait up to the close timeout for the peer to end the TCP
        connection (RFC 6455 section 7.1.1: the server closes first), then drop it. Never raises.
        """
        wire = self._wire
        held, wire.held = wire.held, []
        with contextlib.suppress(Exception):
            transport = wire.transport
            if transport is not None and not transport.is_closing():
                if self._protocol.state is State.OPEN:
                    self._protocol.send_close(code, reason[:_MAX_CLOSE_REASON])
                    wire.flush()
                elif held:
                    wire.flush(b"".join(held))
        await self.linger(self._close_timeout)

    def send_last(self, frames: Iterable[Frame]) -> bool:
        """Write ``frames``, then a close with 1009; follow with :meth:`linger`.

        For a socket that must refuse an oversize message: ``frames`` (the answer to the refused
        request) go before the close, also when the protocol itself refused the message
        (:data:`TOO_LARGE`) and has already queued its close. Returns whether ``frames`` were
        written; never raises.
        """
        wire = self._wire
        held, wire.held = wire.held, []
        transport = wire.transport
        try:
            if transport is None or transport.is_closing():
                return False
            if self._protocol.state is State.OPEN:
                self.send(frames)
                self._protocol.send_close(1009)
                wire.flush()
            else:
                # The protocol has closed its side already; websockets' public frame
                # serialiser encodes the answer (client frames are masked, RFC 6455 5.3).
                encoded = [
                    WsFrame(_OUT_OPCODES[frame.opcode], frame.payload, fin=frame.fin).serialize(
                        mask=True
                    )
                    for frame in frames
                ]
                wire.flush(b"".join(encoded) + b"".join(held))
        except Exception:
            return False
        return True

    async def linger(self, seconds: float) -> None:
        """Wait until the peer hangs up or ``seconds`` pass, then drop the connection.

        Meanwhile whatever arrives is read and discarded by the protocol (it stops parsing once
        it has closed). Closing at once would answer the peer's remaining bytes with a TCP
        reset, which can destroy the answer it has not read yet: the lingering close of RFC 9112
        section 9.6. Never raises.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.shield(self._wire.lost)
        self.abort()

    def abort(self) -> None:
        """Drop the connection now."""
        transport = self._wire.transport
        if transport is not None:
            transport.abort()
