"""RFC 6455 frames on the client side of a relay socket, sans-IO.

The listener is always the WebSocket *client* of the relay (protocol notes section 2), so this
module reads unmasked server frames and writes masked ones. :class:`ClientFrames` is fed the bytes
that follow a successful opening handshake and returns the frames received and the bytes to send
(pongs, the close reply, a close that fails the connection); it never touches a socket.

Why not ``websockets``' ``ClientProtocol`` for this part: it parses every frame with a chain of
generator-based coroutines, several Python calls and objects per frame, which the listener pays
for each relayed request (``benchmarks/relay-report.md``). Here every complete frame of a chunk is
read in one loop over the chunk with integer arithmetic and slices. The opening handshake, where
``websockets`` checks ``Sec-WebSocket-Accept`` (RFC 6455 section 4.1) and the server's choice of
extension and subprotocol, stays with ``websockets`` (:mod:`gateway.relay.websocket`), and
``tests/unit/hybridconnection/test_wsframes.py`` holds this reader to
``websockets``' decisions for any byte stream.

Rules enforced while reading (RFC 6455 section numbers):

* 5.1: a server must not mask; a masked frame fails the connection (1002).
* 5.2: the opcode must be known (1002); the reserved bits must be clear, as no extension is ever
  negotiated (1002). A message (all of its fragments together) is bounded by ``max_size``, checked
  from each frame header before any payload is buffered (1009).
* 5.4: a continuation frame only inside a fragmented message, a new data frame only outside one
  (1002).
* 5.5: control frames carry at most 125 bytes and are never fragmented (1002); a ping is answered
  with a pong carrying the same payload (5.5.2).
* 5.5.1, 7.4: a close payload is empty or a valid code (1000-1003, 1007-1014, 3000-4999) plus a
  UTF-8 reason; a one-byte payload or an invalid code fails with 1002, an invalid reason with 1007.
  A close received is echoed (same payload) and everything after it is discarded (section 1.4).
* 8.1: a text message must be UTF-8; one that is not fails the connection with 1007, detected on
  the frame where it becomes certain.

The checks happen in the order ``websockets`` makes them (opcode, mask, size from the header; the
reserved bits and control-frame rules once the frame is complete), so both refuse the same
streams with the same code. Failing the connection (section 7.1.7) sends a close frame (unless one
was sent already) and discards what follows; as a client, this side then waits for the server to
end the TCP connection (section 7.1.1) and answers that end with its own (``b""`` in
:meth:`ClientFrames.data_to_send`, a half-close).
"""

from __future__ import annotations

import codecs
import enum
import os
from collections.abc import Sequence
from typing import Final, NamedTuple

from gateway.hybridconnection.framing import Frame, Opcode

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_INVALID_DATA",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NO_STATUS",
    "CLOSE_PROTOCOL_ERROR",
    "SEND_EOF",
    "ClientFrames",
    "FramesState",
    "ReceivedFrame",
    "encode_frame",
    "mask_payload",
    "mask_with_integers",
    "valid_close_code",
]

# Close codes (RFC 6455 section 7.4.1). 1005 and 1006 never travel in a close frame: they name
# "no code received" and "no close frame at all" locally.
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_NO_STATUS: Final = 1005
CLOSE_ABNORMAL: Final = 1006
CLOSE_INVALID_DATA: Final = 1007
CLOSE_MESSAGE_TOO_BIG: Final = 1009
# Half-close marker in data_to_send(): write EOF (websockets' convention, kept so the adapter
# handles both the handshake's and the frames' output alike).
SEND_EOF: Final = b""

# Codes an endpoint may put in a close frame: the defined ones of section 7.4.1 that are not
# reserved for local use (1004-1006, 1015), the IANA-registered 1012-1014, and the ranges for
# libraries and applications (section 7.4.2).
_WIRE_CLOSE_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)

_BY_VALUE: Final = {int(member): member for member in Opcode}
_OPCODES: Final[tuple[Opcode | None, ...]] = tuple(_BY_VALUE.get(value) for value in range(16))
_CONTINUATION, _TEXT, _BINARY = Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY
_CLOSE, _PING, _PONG = Opcode.CLOSE, Opcode.PING, Opcode.PONG
_MAX_CONTROL_PAYLOAD: Final = 125
# Masking keys are taken from one buffer of os.urandom bytes refilled when used up: each key is
# used once and unpredictable (section 10.3), without a system call per frame.
_MASK_POOL: Final = 4096


def valid_close_code(code: int) -> bool:
    """Whether ``code`` may travel in a close frame (RFC 6455 sections 7.4.1 and 7.4.2)."""
    return code in _WIRE_CLOSE_CODES or 3000 <= code <= 4999


class ReceivedFrame(NamedTuple):
    """One frame as it came off the wire: ``data`` is the payload (servers never mask)."""

    opcode: Opcode
    data: bytes
    fin: bool


class FramesState(enum.Enum):
    """Where the connection is in its closing handshake (RFC 6455 section 7)."""

    OPEN = "open"  # data flows both ways
    CLOSING = "closing"  # a close frame was sent; waiting for the server to end the connection
    CLOSED = "closed"  # the server ended the TCP connection


class _Masks:
    """Four-byte masking keys from a buffer of ``os.urandom`` output (section 5.3)."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        at = self._at
        if at + 4 > len(self._pool):
            self._pool, at = os.urandom(_MASK_POOL), 0
        self._at = at + 4
        return self._pool[at : at + 4]

    def two(self) -> tuple[bytes, bytes]:
        """Two keys, one for each frame of a pair (each frame its own key, section 5.3)."""
        at = self._at
        if at + 8 > len(self._pool):
            self._pool, at = os.urandom(_MASK_POOL), 0
        self._at = at + 8
        pool = self._pool
        return pool[at : at + 4], pool[at + 4 : at + 8]


# One event loop drives every socket of a process, so one pool serves them all (a per-socket pool
# would cost memory per open stream).
_MASKS: Final = _Masks()


def mask_with_integers(data: bytes | bytearray | memoryview, mask: bytes | bytearray) -> bytes:
    """``data`` XOR the four-byte ``mask`` repeated, as one Python integer XOR (the fallback of
    :func:`mask_payload`; same signature as websockets' routine)."""
    size = len(data)
    if not size:
        return b""
    repeated = int.from_bytes((mask * ((size + 3) >> 2))[:size], "little")
    return (int.from_bytes(data, "little") ^ repeated).to_bytes(size, "little")


try:
    # websockets' C routine XORs a payload with the repeated key in one pass over the buffer:
    # 0.1-0.2 us for each frame of a relayed answer instead of 1-1.5 us with Python integers,
    # and about a hundred times less for a 64 KiB body. websockets is a dependency already (the
    # opening handshake); a build of it without its C extension falls back to the integers.
    from websockets.speedups import apply_mask as _xor_key
except ImportError:  # pragma: no cover - depends on the installed websockets build
    _xor_key = mask_with_integers


def mask_payload(key: bytes, payload: bytes) -> bytes:
    """``payload`` XOR the four-byte ``key`` repeated (RFC 6455 section 5.3); its own inverse."""
    return _xor_key(payload, key)


def _head(first: int, size: int) -> bytes:
    # Client frames always set the MASK bit (section 5.2); the length in its shortest form.
    if size < 126:
        return bytes((first, 0x80 | size))
    if size < 65536:
        return bytes((first, 0xFE)) + size.to_bytes(2, "big")
    return bytes((first, 0xFF)) + size.to_bytes(8, "big")


def encode_frame(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455 sections 5.2 and 5.3)."""
    key = _MASKS.next()
    head = _head((0x80 if fin else 0) | opcode, len(payload))
    return b"".join((head, key, _xor_key(payload, key)))


class ClientFrames:
    """The frames of one client WebSocket after its opening handshake.

    Feed :meth:`receive_data` / :meth:`receive_eof`; take :meth:`events_received` (frames, in
    order; control frames included) and :meth:`data_to_send` after each. ``max_size`` bounds one
    message, all of its fragments together. After a failure, :attr:`failure` is the close code
    this side failed with (1002, 1007, 1009, or 1006 when the connection ended mid-way) and
    :attr:`failure_reason` says why; :attr:`close_received` is the peer's ``(code, reason)`` once
    its close frame arrived (1005 when it carried no code).
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError("max_size must not be negative")
        self.max_size = max_size
        self.state = FramesState.OPEN
        self.close_received: tuple[int, str] | None = None
        self.close_sent: tuple[int, str] | None = None
        self.failure: int | None = None
        self.failure_reason = ""
        self.eof_sent = False
        self._events: list[ReceivedFrame] = []
        self._writes: list[bytes] = []
        self._buffer = b""
        # Size of the fragmented message being received (None between messages), and the UTF-8
        # decoder of a fragmented text message.
        self._message_size: int | None = None
        self._text: codecs.IncrementalDecoder | None = None
        self._discarding = False
        self._eof = False
        self._sending_fragments = False

    # -- output -----------------------------------------------------------------------------

    def events_received(self) -> list[ReceivedFrame]:
        """The frames received since the last call, in order."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        """The bytes to write since the last call; ``b""`` means half-close (write EOF)."""
        writes, self._writes = self._writes, []
        return writes

    # -- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Parse every complete frame of what has arrived (section 5.2)."""
        if self._discarding or self._eof:
            return
        buffer = self._buffer + data if self._buffer else data
        size = len(buffer)
        at = 0
        events = self._events
        while size - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            opcode = _OPCODES[first & 0x0F]
            if opcode is None:
                self._fail(CLOSE_PROTOCOL_ERROR, "invalid opcode")
                return
            if second & 0x80:
                self._fail(CLOSE_PROTOCOL_ERROR, "incorrect masking")
                return
            length = second & 0x7F
            start = at + 2
            if length == 126:
                start = at + 4
                if start > size:
                    break
                length = int.from_bytes(buffer[at + 2 : start], "big")
            elif length == 127:
                start = at + 10
                if start > size:
                    break
                length = int.from_bytes(buffer[at + 2 : start], "big")
            # The bound applies to the whole message, checked before its payload is buffered.
            budget = (
                self.max_size
                if self._message_size is None
                else (self.max_size - self._message_size)
            )
            if length > budget:
                self._fail(CLOSE_MESSAGE_TOO_BIG, f"frame of {length} bytes over the limit")
                return
            end = start + length
            if end > size:
                break
            payload = buffer[start:end]
            at = end
            fin = first >= 0x80
            if first & 0x70:
                self._fail(CLOSE_PROTOCOL_ERROR, "reserved bits must be 0")
                return
            if opcode >= _CLOSE:
                if length > _MAX_CONTROL_PAYLOAD:
                    self._fail(CLOSE_PROTOCOL_ERROR, "control frame too long")
                    return
                if not fin:
                    self._fail(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
                    return
                if opcode is _CLOSE:
                    self._close_frame(payload)
                    return
                if opcode is _PING:
                    self._writes.append(encode_frame(_PONG, payload))
            elif (
                fin
                and self._message_size is None
                and (opcode is _BINARY or (opcode is _TEXT and payload.isascii()))
            ):
                # A whole message in one frame (every control message the relay sends): nothing
                # to track for section 5.4, and ASCII is UTF-8 (section 8.1) without decoding it.
                pass
            elif not self._data_frame(opcode, payload, fin):
                return
            events.append(ReceivedFrame(opcode, payload, fin))
        self._buffer = buffer[at:] if at < size else b""

    def _data_frame(self, opcode: Opcode, payload: bytes, fin: bool) -> bool:
        """Fragmentation (section 5.4) and UTF-8 (section 8.1); False once failed."""
        if opcode is _CONTINUATION:
            if self._message_size is None:
                self._fail(CLOSE_PROTOCOL_ERROR, "unexpected continuation frame")
                return False
            self._message_size = None if fin else self._message_size + len(payload)
            decoder = self._text
            if decoder is not None:
                if fin:
                    self._text = None
                try:
                    decoder.decode(payload, fin)
                except UnicodeDecodeError:
                    return self._not_utf8()
            return True
        if self._message_size is not None:
            self._fail(CLOSE_PROTOCOL_ERROR, "expected a continuation frame")
            return False
        if not fin:
            self._message_size = len(payload)
        if opcode is _TEXT:
            try:
                if fin:
                    payload.decode("utf-8")
                else:
                    self._text = codecs.getincrementaldecoder("utf-8")()
                    self._text.decode(payload, False)
            except UnicodeDecodeError:
                return self._not_utf8()
        return True

    def _not_utf8(self) -> bool:
        self._text = None
        self._fail(CLOSE_INVALID_DATA, "text message is not UTF-8")
        return False

    def _close_frame(self, payload: bytes) -> None:
        """The peer's close (section 5.5.1): check, echo, then discard what follows."""
        if len(payload) == 1:
            self._fail(CLOSE_PROTOCOL_ERROR, "close frame too short")
            return
        if payload:
            code = int.from_bytes(payload[:2], "big")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA, "close reason is not UTF-8")
                return
            if not valid_close_code(code):
                self._fail(CLOSE_PROTOCOL_ERROR, "invalid close code")
                return
        else:
            code, reason = CLOSE_NO_STATUS, ""
        self.close_received = (code, reason)
        if self._message_size is not None:
            self._fail(CLOSE_PROTOCOL_ERROR, "incomplete fragmented message")
            return
        if self.state is FramesState.OPEN:
            # Echo the peer's payload as it came (section 5.5.1: "typically echos the status
            # code it received"), which also answers an empty close with an empty one.
            self._writes.append(encode_frame(_CLOSE, payload))
            self.close_sent = self.close_received
            self.state = FramesState.CLOSING
        self._events.append(ReceivedFrame(_CLOSE, payload, True))
        self._discard()

    def receive_eof(self) -> None:
        """The server ended the TCP connection; end this side too (section 7.1.1)."""
        if self._eof:
            return
        self._eof = True
        if not self._discarding:
            # No closing handshake: the connection failed (section 7.1.5, code 1006). There is
            # nothing to send a close frame on.
            self.failure = CLOSE_ABNORMAL
            self.failure_reason = "unexpected end of stream"
            self._discarding = True
            self._buffer = b""
        self._writes.append(SEND_EOF)
        self.eof_sent = True
        self.state = FramesState.CLOSED

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (section 7.1.7): a close with ``code`` unless one was sent."""
        if self.state is FramesState.OPEN:
            self._writes.append(encode_frame(_CLOSE, code.to_bytes(2, "big") + reason.encode()))
            self.close_sent = (code, reason)
            self.state = FramesState.CLOSING
        self.failure = code
        self.failure_reason = reason
        self._discard()

    def _discard(self) -> None:
        # Section 1.4 / 7.1.7: nothing after a close or a failure is processed.
        self._discarding = True
        self._buffer = b""
        self._message_size = None
        self._text = None

    # -- sending ----------------------------------------------------------------------------

    def send_data(self, opcode: Opcode, payload: bytes, fin: bool = True) -> None:
        """Queue one data frame; fragments must form whole messages (section 5.4)."""
        self._writes.append(self.encode_data(opcode, payload, fin))

    def encode_data(self, opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
        """The bytes of one data frame, for a caller that writes them itself."""
        if self.state is not FramesState.OPEN:
            raise ValueError(f"cannot send data on a {self.state.value} connection")
        if (opcode is _CONTINUATION) != self._sending_fragments or opcode >= _CLOSE:
            raise ValueError("data frames out of order (RFC 6455 section 5.4)")
        self._sending_fragments = not fin
        return encode_frame(opcode, payload, fin)

    def encode_frames(self, frames: Sequence[Frame]) -> bytes:
        """The bytes of several data frames in order (:meth:`encode_data` of each, joined).

        All or nothing: a frame out of order raises before anything is taken, so a message is
        never half encoded (a response's JSON without its body, section 5.4).
        """
        if self.state is not FramesState.OPEN:
            raise ValueError(f"cannot send data on a {self.state.value} connection")
        fragments = self._sending_fragments
        for frame in frames:
            if (frame.opcode is _CONTINUATION) != fragments or frame.opcode >= _CLOSE:
                raise ValueError("data frames out of order (RFC 6455 section 5.4)")
            fragments = not frame.fin
        self._sending_fragments = fragments
        return b"".join([encode_frame(frame.opcode, frame.payload, frame.fin) for frame in frames])

    def encode_text_and_binary(self, text: bytes, binary: bytes | None) -> bytes:
        """A text message, then (unless ``binary`` is ``None``) a binary message, each in one
        frame: the bytes :meth:`encode_frames` gives for those frames, with a key per frame.

        The shape of every relayed answer (protocol notes section 5.4: the ``response`` JSON,
        then its body), encoded without a :class:`Frame` per message.
        """
        if self.state is not FramesState.OPEN:
            raise ValueError(f"cannot send data on a {self.state.value} connection")
        if self._sending_fragments:
            raise ValueError("data frames out of order (RFC 6455 section 5.4)")
        if binary is None:
            key = _MASKS.next()
            return b"".join((_head(0x81, len(text)), key, _xor_key(text, key)))
        text_key, binary_key = _MASKS.two()
        return b"".join(
            (
                _head(0x81, len(text)),  # FIN and TEXT (section 5.2)
                text_key,
                _xor_key(text, text_key),
                _head(0x82, len(binary)),  # FIN and BINARY
                binary_key,
                _xor_key(binary, binary_key),
            )
        )

    def send_ping(self, payload: bytes) -> None:
        """Queue a ping (section 5.5.2); allowed until the server ends the connection."""
        if self.state is FramesState.CLOSED:
            raise ValueError("cannot ping a closed connection")
        if len(payload) > _MAX_CONTROL_PAYLOAD:
            raise ValueError("control frame payloads are at most 125 bytes")
        self._writes.append(encode_frame(_PING, payload))

    def send_close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with ``code`` (section 5.5.1); only while open."""
        if self.state is not FramesState.OPEN:
            raise ValueError(f"cannot close a {self.state.value} connection")
        if not valid_close_code(code):
            raise ValueError(f"{code} is not a close code that may be sent")
        payload = code.to_bytes(2, "big") + reason.encode()
        if len(payload) > _MAX_CONTROL_PAYLOAD:
            raise ValueError("close reason too long for a control frame")
        self._writes.append(encode_frame(_CLOSE, payload))
        self.close_sent = (code, reason)
        self.state = FramesState.CLOSING
