"""One relay WebSocket: websockets' sans-IO client protocol on a stream this module owns.

The listener needs three things from a WebSocket client that aiohttp's public API does not give:
a response's JSON and body frames in one write, a streamed body as one fragmented binary message
(protocol notes section 5.3; RFC 6455 section 5.4), and a last response (413) before it closes
a socket whose message it refused for its size (catalogue item 150). The ``websockets``
library's sans-IO protocol (``websockets.client.ClientProtocol``) gives all three through its
public methods: it turns frames to send into bytes and bytes received into frames, and this
module moves the bytes. The stream comes from :func:`gateway.outbound.proxy.open_stream`, so a
relay socket reaches the internet exactly as before: direct, or through the configured proxy's
``CONNECT`` tunnel, with TLS end to end.

Frames received are handed out as they arrive (``receive``), not reassembled: the protocol core
(:class:`gateway.hybridconnection.connection.ListenerConnection`) reads frames. Pings are
answered by the protocol; everything the protocol queues is written before ``receive`` returns.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Final

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, InvalidURI, PayloadTooBig
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode as WsOpcode
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from gateway.hybridconnection.framing import Frame, Opcode
from gateway.outbound.proxy import OutboundProxy, open_stream

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

# One read from the stream; large bodies arrive in several.
_READ_SIZE: Final = 256 * 1024
# Writes wait for the transport's buffer to drain below asyncio's high-water mark (64 KiB).
_MAX_CLOSE_REASON: Final = 120


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
    async with asyncio.timeout(handshake_timeout):
        reader, writer = await open_stream(proxy, url, connect_timeout=handshake_timeout)
        socket = RelayWebSocket(protocol, reader, writer, close_timeout=close_timeout)
        try:
            await socket.handshake(headers or {})
        except BaseException:
            socket.abort()
            raise
    return socket


class RelayWebSocket:
    """An open client WebSocket. One task reads (:meth:`receive`); any task may write.

    Writes are synchronous up to the transport (``send``, ``ping``): a sequence of them with no
    ``await`` between is written in that order with nothing in between; the caller orders whole
    messages (section 5.4) with its own lock and waits with :meth:`drain`.
    """

    def __init__(
        self,
        protocol: ClientProtocol,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        close_timeout: float,
    ) -> None:
        self._protocol = protocol
        self._reader = reader
        self._writer = writer
        self._close_timeout = close_timeout
        self._backlog: list[WsFrame | TooLarge] = []
        self._eof = asyncio.Event()
        self._reading = False
        self._held: list[bytes] = []
        self._too_large = False
        self._messages: collections.deque[WsFrame | TooLarge] = collections.deque()

    # -- opening -------------------------------------------------------------------------

    async def handshake(self, headers: Mapping[str, str]) -> None:
        """Send the upgrade request with ``headers`` added and read the answer."""
        protocol = self._protocol
        request = protocol.connect()
        for name, value in headers.items():
            request.headers[name] = value
        protocol.send_request(request)
        self._flush()
        while True:
            data = await self._reader.read(_READ_SIZE)
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            upgraded = False
            for event in protocol.events_received():
                if isinstance(event, WsFrame):
                    self._backlog.append(event)
                else:
                    upgraded = protocol.handshake_exc is None
            failure = protocol.handshake_exc
            if isinstance(failure, InvalidStatus):
                response = failure.response
                raise HandshakeRefusedError(response.status_code, response.reason_phrase)
            if failure is not None:
                raise RelaySocketError(f"WebSocket handshake failed: {type(failure).__name__}")
            # Frames that came with the answer are read already; they are handed out first.
            self._check_too_large(self._backlog)
            if upgraded:
                return
            if not data:
                raise RelaySocketError("connection closed during the WebSocket handshake")

    def _check_too_large(self, received: list[WsFrame | TooLarge]) -> bool:
        """Flush what the protocol queued, unless it refused a message for its size just now:
        then hold its 1009 close (for :meth:`close_after`) and mark ``received``."""
        if isinstance(self._protocol.parser_exc, PayloadTooBig) and not self._too_large:
            self._too_large = True
            self._held = self._protocol.data_to_send()
            received.append(TOO_LARGE)
            return True
        self._flush()
        return False

    # -- state ---------------------------------------------------------------------------

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose, if any."""
        return self._protocol.subprotocol

    @property
    def open(self) -> bool:
        """Whether data can still be sent."""
        return self._protocol.state is State.OPEN and not self._writer.is_closing()

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
        if self._backlog:
            events, self._backlog = self._backlog, []
            return events
        protocol = self._protocol
        self._reading = True
        try:
            while not self._eof.is_set():
                try:
                    data = await self._reader.read(_READ_SIZE)
                except OSError:
                    data = b""
                if data:
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                    self._eof.set()
                received: list[WsFrame | TooLarge] = [
                    event for event in protocol.events_received() if isinstance(event, WsFrame)
                ]
                if self._check_too_large(received) or received:
                    return received
            return []
        finally:
            self._reading = False

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
        """Write data frames (masked by the protocol, RFC 6455 section 5.3) in one write."""
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
        self._flush()

    def ping(self, data: bytes) -> None:
        """Send a ping (section 3.3)."""
        if not self.open:
            raise ConnectionResetError("relay socket is closed")
        self._protocol.send_ping(data)
        self._flush()

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        if self._writer.is_closing():
            raise ConnectionResetError("relay socket is closed")
        await self._writer.drain()

    def _flush(self) -> None:
        chunks = self._protocol.data_to_send()
        if not chunks:
            return
        writer = self._writer
        if writer.is_closing():
            return
        payload = b"".join(chunks)
        if payload:
            writer.write(payload)
        if chunks[-1] == b"" and writer.can_write_eof():
            # websockets' SEND_EOF: half-close after the closing handshake (RFC 6455 7.1.1).
            with contextlib.suppress(OSError):
                writer.write_eof()

    # -- closing -------------------------------------------------------------------------

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code``; wait up to the close timeout for the peer to end the TCP
        connection (RFC 6455 section 7.1.1: the server closes first), then drop it. Never raises.
        """
        held, self._held = self._held, []
        with contextlib.suppress(Exception):
            if self._protocol.state is State.OPEN and not self._writer.is_closing():
                self._protocol.send_close(code, reason[:_MAX_CLOSE_REASON])
                self._flush()
            elif held and not self._writer.is_closing():
                self._writer.write(b"".join(held))
        await self._linger(self._close_timeout)

    def send_last(self, frames: Iterable[Frame]) -> bool:
        """Write ``frames``, then a close with 1009; follow with :meth:`linger`.

        For a socket that must refuse an oversize message: ``frames`` (the answer to the refused
        request) go before the close, also when the protocol itself refused the message
        (:data:`TOO_LARGE`) and has already queued its close. Returns whether ``frames`` were
        written; never raises.
        """
        held, self._held = self._held, []
        written = False
        try:
            if not self._writer.is_closing():
                if self._protocol.state is State.OPEN:
                    self.send(frames)
                    self._protocol.send_close(1009)
                    self._flush()
                else:
                    # The protocol has closed its side already; websockets' public frame
                    # serialiser encodes the answer (client frames are masked, RFC 6455 5.3).
                    encoded = [
                        WsFrame(_OUT_OPCODES[frame.opcode], frame.payload, fin=frame.fin).serialize(
                            mask=True
                        )
                        for frame in frames
                    ]
                    self._writer.write(b"".join(encoded) + b"".join(held))
                written = True
        except Exception:
            written = False
        return written

    async def linger(self, seconds: float) -> None:
        """Read on and discard until the peer hangs up or ``seconds`` pass, then drop the
        connection. Closing at once would answer the peer's remaining bytes with a TCP reset,
        which can destroy the answer it has not read yet: the lingering close of RFC 9112
        section 9.6. Never raises.
        """
        await self._linger(seconds)

    async def _linger(self, wait: float) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(wait):
                if self._reading:
                    await self._eof.wait()
                else:
                    while not self._eof.is_set():
                        self._backlog.clear()
                        await self.receive()
        self.abort()

    def abort(self) -> None:
        """Drop the connection now."""
        self._eof.set()
        transport = self._writer.transport
        transport.abort()
