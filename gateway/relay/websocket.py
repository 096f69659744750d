"""One relay WebSocket: websockets' sans-IO client protocol on a connection this module owns.

The listener needs three things from a WebSocket client that aiohttp's public API does not give:
a response's JSON and body frames in one write, a streamed body as one fragmented binary message
(protocol notes section 5.3; RFC 6455 section 5.4), and a last response (413) before it closes
a socket whose message it refused for its size (catalogue item 150). Two sans-IO pieces give
them: the opening handshake is ``websockets``' (``websockets.client.ClientProtocol``: the
request, and the checks of the answer, ``Sec-WebSocket-Accept`` included, RFC 6455 section 4.1),
and every frame after it is read and written by the core's
:class:`gateway.hybridconnection.wsframes.ClientFrames`, which parses all complete frames of a
chunk in one loop (``websockets``' generator-based parser cost several microseconds a frame on
the listener's hot path). This module moves the bytes. The connection comes from
:func:`gateway.outbound.proxy.open_transport`, so a relay socket reaches the internet exactly as
before: direct, or through the configured proxy's ``CONNECT`` tunnel, with TLS end to end.

The bytes are moved by an ``asyncio.Protocol`` (:class:`_Wire`). Until the handshake is done,
what arrives goes to ``websockets``, cut at the end of the response head (``CRLF CRLF``) so that
frames the relay sends right behind a ``101`` (a rendezvous socket's request) reach the frame
reader and not ``websockets``' buffer. After it, what arrives is parsed in ``data_received``
itself, and what the frame reader queues in answer (pongs, the close reply) is written in the
same loop iteration, without a task switch or a copy through a stream buffer. Frames received
are handed out as they arrive (``receive``), not reassembled: the protocol core
(:class:`gateway.hybridconnection.connection.ListenerConnection`) reads frames. Reading pauses
while more than :data:`_HIGH_WATER` bytes of frames wait for the application.

Outgoing bytes are coalesced per event-loop iteration: :meth:`RelayWebSocket.send` and
:meth:`RelayWebSocket.ping` only queue, and one ``call_soon`` flush writes everything queued in
that iteration with one ``write`` (one ``send()``), so the answers that many tasks finish in the
same iteration share a system call. Every byte still leaves in the order the protocol produced
it; a close, an end of the connection or more than :data:`_COALESCE_LIMIT` queued bytes write at
once, so backpressure (``drain``) never lags by more than that many bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from gateway.hybridconnection.framing import Frame, Opcode
from gateway.hybridconnection.wsframes import (
    CLOSE_MESSAGE_TOO_BIG,
    SEND_EOF,
    ClientFrames,
    FramesState,
    ReceivedFrame,
    encode_frame,
)
from gateway.outbound.proxy import OutboundProxy, open_transport

__all__ = [
    "TOO_LARGE",
    "HandshakeRefusedError",
    "ReceivedFrame",
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


_HEAD_END: Final = b"\r\n\r\n"


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
    wire = _Wire(protocol, ClientFrames(max_size))
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
    """Moves bytes between an asyncio transport, the handshake and the frame reader."""

    def __init__(self, protocol: ClientProtocol, frames: ClientFrames) -> None:
        # websockets' protocol is needed for the handshake only: once it has accepted the answer
        # it is dropped, with the request and response it holds (about 2 KiB a socket, and a
        # gateway holds one socket per open stream); only the chosen subprotocol is kept.
        self.protocol: ClientProtocol | None = protocol
        self.subprotocol: str | None = None
        self.codec = frames
        self.transport: asyncio.Transport | None = None
        # A list, swapped out whole by take(): an empty deque costs about 600 bytes a socket.
        self.frames: list[ReceivedFrame | TooLarge] = []
        self.buffered = 0
        # True until websockets has accepted the handshake's answer; the last bytes fed to it,
        # to find a head end split across two reads; whether the head has ended (then every
        # byte until the handshake's outcome is websockets': a refusal's body).
        self.handshaking = True
        self._tail = b""
        self._head_done = False
        self.held: list[bytes] = []
        self.too_large = False
        self.ended = False
        # Kept: asyncio.get_running_loop() costs a getpid() system call per call on Python
        # 3.11, and queue() runs for every answer.
        self._loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self.paused_writing = False
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
        if self.handshaking:
            self._handshake_data(data)
            return
        self.codec.receive_data(data)
        self._collect()

    def _handshake_data(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol is None:  # the handshake has failed already: nothing more to read
            return
        rest = b""
        if not self._head_done:
            seen = self._tail + data
            end = seen.find(_HEAD_END)
            if end < 0:
                self._tail = seen[-3:]
            else:
                # The head ends inside this chunk (the tail itself holds no head end).
                cut = end + len(_HEAD_END) - len(self._tail)
                data, rest = data[:cut], data[cut:]
                self._head_done = True
        protocol.receive_data(data)
        # The Response event is not needed: websockets has checked it (RFC 6455 4.1) and keeps
        # what the socket needs (the subprotocol); taking the events lets it go.
        protocol.events_received()
        if protocol.state is State.OPEN:
            self.subprotocol = protocol.subprotocol
            # Nothing queued by the protocol is lost: it has no output after the request.
            self.queue()
            self.protocol = None
            self.handshaking = False
            if rest:
                self.codec.receive_data(rest)
                self._collect()
                return
        elif rest:
            protocol.receive_data(rest)  # a refusal's body, or bytes it discards
        self.queue()
        self._wake()

    def eof_received(self) -> bool:
        if self.handshaking:
            if self.protocol is not None:
                self.protocol.receive_eof()
        else:
            self.codec.receive_eof()
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
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        for drainer in self._drainers:
            if not drainer.done():
                drainer.set_result(None)
        self._drainers.clear()

    # -- moving events and bytes -----------------------------------------------------------

    def _collect(self) -> None:
        codec = self.codec
        events = codec.events_received()
        if events:
            self.frames.extend(events)
            for event in events:
                self.buffered += len(event.data)
        if codec.failure == CLOSE_MESSAGE_TOO_BIG and not self.too_large:
            # The reader refused a message from its frame header and queued its 1009 close;
            # hold that close so send_last() can put the answer to the refused request first.
            self.too_large = True
            self.held = codec.data_to_send()
            self.frames.append(TOO_LARGE)
        else:
            # Pongs and the close reply join this iteration's writes (RFC 6455 5.5.3 asks for
            # a pong "as soon as is practical").
            self.queue()
        if self.buffered > _HIGH_WATER and not self._paused_reading and self.transport:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake()

    def _output(self) -> list[bytes]:
        chunks = self.codec.data_to_send()
        if self.handshaking and self.protocol is not None:
            chunks = self.protocol.data_to_send() + chunks
        return chunks

    def queue(self, chunk: bytes | None = None) -> None:
        """Take ``chunk`` and what the protocol queued; write them with the others of this loop
        iteration."""
        if chunk is None:
            chunks = self._output()
            if not chunks:
                return
            self._pending.extend(chunks)
            self._pending_size += sum(len(chunk) for chunk in chunks)
            last = chunks[-1]
        else:
            self._pending.append(chunk)
            self._pending_size += len(chunk)
            last = chunk
        if last == SEND_EOF or self._pending_size >= _COALESCE_LIMIT:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        self.flush()

    def flush(self, after: bytes = b"") -> None:
        """Write what is queued, what the protocol queued since, then ``after``: one write."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        chunks = self._pending
        chunks.extend(self._output())
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
        if SEND_EOF in chunks and transport.can_write_eof():
            # Half-close after the closing handshake (RFC 6455 7.1.1), or after a refused
            # handshake; it is the last output, so nothing queued follows it.
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()

    def _drop_pending(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending = []
        self._pending_size = 0

    def take(self) -> list[ReceivedFrame | TooLarge]:
        """Every frame received so far (reading resumes once they are taken)."""
        frames, self.frames = self.frames, []
        self.buffered = 0
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        return frames

    async def wait(self) -> None:
        """Until a frame arrives or the connection ends."""
        if self.frames or self.ended:
            return
        waiter = self._loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("relay socket is closed")
        if not self.paused_writing:
            return
        drainer: asyncio.Future[None] = self._loop.create_future()
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
        self._codec = wire.codec
        self._close_timeout = close_timeout
        # Frames received but not yet consumed by receive_message(), and the next one's index:
        # a list and an index rather than a deque (about 600 bytes a socket while empty).
        self._messages: list[ReceivedFrame | TooLarge] = []
        self._next = 0

    # -- opening -------------------------------------------------------------------------

    async def handshake(self, headers: Mapping[str, str]) -> None:
        """Send the upgrade request with ``headers`` added and wait for the answer."""
        wire = self._wire
        protocol = wire.protocol
        if protocol is None:
            raise RelaySocketError("the WebSocket handshake has already run")
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
            if not wire.handshaking:
                return
            if wire.ended:
                raise RelaySocketError("connection closed during the WebSocket handshake")
            await wire.wait()

    # -- state ---------------------------------------------------------------------------

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose, if any."""
        return self._wire.subprotocol

    @property
    def open(self) -> bool:
        """Whether data can still be sent."""
        transport = self._wire.transport
        return (
            self._codec.state is FramesState.OPEN
            and not self._wire.handshaking
            and transport is not None
            and not transport.is_closing()
        )

    @property
    def writable(self) -> bool:
        """Whether the transport takes writes now: :meth:`drain` would not wait."""
        return not self._wire.paused_writing

    @property
    def close_code(self) -> int | None:
        """The code of the peer's close frame, once one arrived."""
        received = self._codec.close_received
        return None if received is None else received[0]

    @property
    def close_reason(self) -> str:
        """The reason text of the peer's close frame (empty if none)."""
        received = self._codec.close_received
        return "" if received is None else received[1]

    # -- reading -------------------------------------------------------------------------

    async def receive(self) -> list[ReceivedFrame | TooLarge]:
        """The next frames (data and control), or ``[]`` once the connection has ended."""
        wire = self._wire
        # A wake-up need not bring a frame: a read may end inside one (a large body over TLS
        # arrives in records of at most 16 KiB). Only the end of the connection returns [].
        while not wire.frames:
            if wire.ended:
                return []
            await wire.wait()
        return wire.take()

    async def receive_message(self) -> str | bytes | None:
        """The next whole data message (``str`` text, ``bytes`` binary); ``None`` once closed.

        Fragments are joined (bounded by ``max_size``, which the frame reader enforces, as it
        checks that text is UTF-8: RFC 6455 section 8.1).
        """
        parts: list[bytes] = []
        text = False
        while True:
            if self._next == len(self._messages):
                # Let the consumed frames (and their payloads) go while waiting for more.
                self._messages, self._next = [], 0
                events = await self.receive()
                if not events:
                    return None
                self._messages, self._next = events, 0
            event = self._messages[self._next]
            self._next += 1
            if isinstance(event, TooLarge):
                return None
            opcode = event.opcode
            if opcode is Opcode.CLOSE:
                return None
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                text = opcode is Opcode.TEXT
                parts = [event.data]
            elif opcode is Opcode.CONTINUATION:
                parts.append(event.data)
            else:
                continue  # ping (answered by the frame reader) or pong
            if not event.fin:
                continue
            data = b"".join(parts)
            # The reader has failed the connection (1007) for a text message that is not UTF-8.
            return data.decode("utf-8") if text else data

    # -- writing -------------------------------------------------------------------------

    def send(self, frames: Sequence[Frame]) -> None:
        """Queue data frames (masked, RFC 6455 section 5.3) for this loop iteration's write;
        frames sent with no ``await`` between stay together and in order."""
        if not self.open:
            raise ConnectionResetError("relay socket is closed")
        # One chunk for the whole message sequence (a response's JSON and body): they leave in
        # this order either way, and the write queue takes one piece instead of several.
        self._wire.queue(self._codec.encode_frames(frames))

    def try_send(self, frames: Sequence[Frame]) -> bool:
        """:meth:`send` if the socket is open and the transport takes writes now (:meth:`drain`
        would not wait); ``False``, with nothing queued, otherwise."""
        if self._wire.paused_writing or not self.open:
            return False
        self._wire.queue(self._codec.encode_frames(frames))
        return True

    def try_send_text_and_binary(self, text: bytes, binary: bytes | None) -> bool:
        """:meth:`try_send` of a text frame carrying ``text`` and, unless ``binary`` is
        ``None``, a binary frame carrying ``binary`` (a relayed answer, protocol notes section
        5.4), encoded without a :class:`Frame` per message."""
        wire = self._wire
        if wire.paused_writing or not self.open:
            return False
        wire.queue(self._codec.encode_text_and_binary(text, binary))
        return True

    def ping(self, data: bytes) -> None:
        """Send a ping (section 3.3); nothing on a socket that is closing or closed.

        Never raises: a closed socket is the reader's news (it sees the close or the end of
        the connection), and a ping timer that fires in the same moment must not turn it into
        an error of its own.
        """
        if self.open:
            self._codec.send_ping(data)
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
                if self._codec.state is FramesState.OPEN and not wire.handshaking:
                    self._codec.send_close(code, reason[:_MAX_CLOSE_REASON])
                    wire.flush()
                elif held:
                    wire.flush(b"".join(held))
        await self.linger(self._close_timeout)

    def send_last(self, frames: Sequence[Frame]) -> bool:
        """Write ``frames``, then a close with 1009; follow with :meth:`linger`.

        For a socket that must refuse an oversize message: ``frames`` (the answer to the refused
        request) go before the close, also when the frame reader itself refused the message
        (:data:`TOO_LARGE`) and has already queued its close. Returns whether ``frames`` were
        written; never raises.
        """
        wire = self._wire
        held, wire.held = wire.held, []
        transport = wire.transport
        try:
            if transport is None or transport.is_closing():
                return False
            if self._codec.state is FramesState.OPEN:
                self.send(frames)
                self._codec.send_close(1009)
                wire.flush()
            else:
                # The reader has closed its side already; the answer is still framed (and
                # masked, RFC 6455 5.3) as a client's, and goes before the held close.
                encoded = [encode_frame(frame.opcode, frame.payload, frame.fin) for frame in frames]
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
