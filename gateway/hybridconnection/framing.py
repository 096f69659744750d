"""Sans-IO state machines for one Hybrid Connections socket, plus outgoing-frame helpers.

A channel is fed WebSocket frames (or whole messages, for libraries that reassemble fragments)
and returns protocol events. It never touches a socket, so the same code serves the production
listener, the local relay emulator and the tests.

Framing rules implemented here (protocol notes sections 3.2, 5.3 and 5.4):

* Control messages are JSON in text messages. A ``request`` / ``response`` with ``"body": true``
  is followed immediately by exactly one binary message carrying the whole body, possibly split
  into a binary frame and continuation frames, the last with FIN.
* Bodies on the control channel are at most 64 KiB; larger ones use a rendezvous socket.
* Fragmentation follows RFC 6455 section 5.4: a message is one data frame plus continuation
  frames; control frames (ping, pong, close) may be interleaved and are not data.

Error policy (catalogue item 131): an unknown command or a command that is not allowed on this
socket is reported as a non-fatal :class:`ProtocolViolation` and otherwise ignored, as the .NET
listener does; so is a defective ``accept`` or rendezvous-only ``request``
(:class:`MalformedCommandError`), which no body message follows. A ``request`` that is malformed
but addressable (sound ``id`` and ``body`` flag,
some other field defective: :class:`MalformedRequestError`) is reported as
:class:`MalformedRequestReceived` once its body, if any, has been read and dropped, so the framing
stays in step; the listener answers it 400 on the socket it came from and keeps that socket. A
defect that leaves the framing or the peer in doubt (bad JSON, an unanswerable command that may be
followed by a body, a text frame where a body is due, oversize data) is fatal: the owner must drop
the connection. An oversize request body is reported with its request's id
(``ProtocolViolation.request_id``) so the listener can answer it 413 first (catalogue item 150);
libraries that enforce the size bound themselves report it with ``receive_too_large()``.

Tolerance is bounded: every non-fatal violation except an unknown command (ignored for forward
compatibility, section 3.2) and every malformed request counts against
``ChannelLimits.max_violations`` within a sliding ``violation_window`` of seconds; one more is a
fatal ``too_many_violations``, so a peer that sends nothing but defects loses the socket instead
of occupying it. Unknown commands stay free: a service that adds a notification must not take
listeners down.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gateway.hybridconnection.errors import (
    MalformedCommandError,
    MalformedRequestError,
    MessageTooLargeError,
    MissingFieldError,
    ProtocolError,
    TooManyViolationsError,
    UnexpectedCommandError,
    UnexpectedFrameError,
    UnknownCommandError,
)
from gateway.hybridconnection.messages import (
    MAX_CONTROL_MESSAGE_SIZE,
    AcceptCommand,
    Command,
    RendezvousRequestCommand,
    RenewTokenCommand,
    RequestCommand,
    ResponseCommand,
    command_bytes,
    parse_command,
)
from gateway.hybridconnection.records import slot_setters

# Section 5.3: request and response bodies on the control channel are each at most 64 KB.
CONTROL_CHANNEL_BODY_LIMIT: Final = 64 * 1024
# Bodies on rendezvous sockets have no documented limit (section 7); ours is a finite default.
DEFAULT_RENDEZVOUS_BODY_LIMIT: Final = 16 * 1024 * 1024
# Violation budget: a real relay never sends a defective message (its HTTP front door refuses what
# the JSON could not carry), so a few in a window are a sender's oddity, dozens a broken peer.
DEFAULT_MAX_VIOLATIONS: Final = 32
DEFAULT_VIOLATION_WINDOW: Final = 10.0


class Opcode(enum.IntEnum):
    """WebSocket frame opcodes (RFC 6455 section 5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class SocketKind(enum.Enum):
    """Which of the two socket roles a channel models (section 1)."""

    CONTROL = "control"
    RENDEZVOUS = "rendezvous"


@dataclass(frozen=True, slots=True, init=False)
class Frame:
    """One outgoing WebSocket data frame."""

    opcode: Opcode
    payload: bytes
    fin: bool = True

    def __init__(self, opcode: Opcode, payload: bytes, fin: bool = True) -> None:
        set_opcode, set_payload, set_fin = _FRAME_SLOTS  # two per response (see records.py)
        set_opcode(self, opcode)
        set_payload(self, payload)
        set_fin(self, fin)


_FRAME_SLOTS: Final = slot_setters(Frame, "opcode", "payload", "fin")


@dataclass(frozen=True, slots=True)
class ChannelLimits:
    """Bounds enforced while reading.

    ``max_message_size``: UTF-8 size of a control message. ``max_body_size``: size of one body.
    ``max_violations`` / ``violation_window``: how many tolerated (non-fatal) violations and
    malformed requests a socket may produce within any ``violation_window`` seconds; one more is
    fatal.
    """

    max_message_size: int = MAX_CONTROL_MESSAGE_SIZE
    max_body_size: int = CONTROL_CHANNEL_BODY_LIMIT
    max_violations: int = DEFAULT_MAX_VIOLATIONS
    violation_window: float = DEFAULT_VIOLATION_WINDOW

    def __post_init__(self) -> None:
        """Refuse limits that would make every message or every defect fatal."""
        if self.max_message_size < 1 or self.max_body_size < 0:
            raise ValueError("message and body limits must be positive")
        if self.max_violations < 0 or self.violation_window <= 0:
            raise ValueError("the violation budget needs max_violations >= 0 and a positive window")

    @classmethod
    def for_socket(
        cls,
        kind: SocketKind,
        *,
        rendezvous_body_limit: int = DEFAULT_RENDEZVOUS_BODY_LIMIT,
        max_violations: int = DEFAULT_MAX_VIOLATIONS,
        violation_window: float = DEFAULT_VIOLATION_WINDOW,
    ) -> ChannelLimits:
        """The protocol's limits for ``kind``: 64 KiB bodies on control, ``rendezvous_body_limit``
        on rendezvous sockets; the violation budget as given."""
        body = CONTROL_CHANNEL_BODY_LIMIT if kind is SocketKind.CONTROL else rendezvous_body_limit
        return cls(
            max_body_size=body, max_violations=max_violations, violation_window=violation_window
        )


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcceptReceived:
    """A WebSocket sender waits; its rendezvous address has passed the address check."""

    command: AcceptCommand


@dataclass(frozen=True, slots=True, init=False)
class RequestReceived:
    """A complete HTTP request; ``body`` is ``None`` when the request said ``"body": false``.

    On a control channel ``command.address`` has passed the address check; on a rendezvous socket
    it is always ``None`` (the response goes back on that socket).
    """

    command: RequestCommand
    body: bytes | None

    def __init__(self, command: RequestCommand, body: bytes | None) -> None:
        set_command, set_body = _RECEIVED_SLOTS  # one per request (see records.py)
        set_command(self, command)
        set_body(self, body)


_RECEIVED_SLOTS: Final = slot_setters(RequestReceived, "command", "body")


@dataclass(frozen=True, slots=True)
class RendezvousRequested:
    """Rendezvous-only ``request``: connect to ``command.address`` to receive the request."""

    command: RendezvousRequestCommand


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """(Relay side) a complete response; ``body`` is ``None`` when it said ``"body": false``."""

    command: ResponseCommand
    body: bytes | None


@dataclass(frozen=True, slots=True)
class TokenRenewalReceived:
    """(Relay side) the listener sent ``renewToken``."""

    command: RenewTokenCommand


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer broke the protocol; when ``fatal`` the connection must be dropped.

    ``request_id`` is set for exactly one case: a request body larger than ``max_body_size``
    (``message_too_large``) carries its request's ``id``, so the listener can answer that request
    ``413 Content Too Large`` (RFC 9110 section 15.5.14) on the rendezvous socket before closing
    it (catalogue item 150). It is ``None`` for every other violation.
    """

    error: ProtocolError
    fatal: bool
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class MalformedRequestReceived:
    """A ``request`` that is malformed but addressable; answer ``request_id`` with 400.

    Reported after the request's body (when ``"body": true``) has been read and dropped, so the
    socket is in step again. The response goes back where the request came from: on the control
    channel (it is small, section 5.3) or on the rendezvous socket it arrived on (section 3.2).
    ``error.field_error`` says what was wrong; its message holds no field value. When it is a
    :class:`BadRendezvousAddressError` the request itself was sound but its rendezvous address
    failed the address check: answer it 502 on the control channel and never dial the address.
    """

    request_id: str
    error: MalformedRequestError


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The peer sent a close frame (``code`` is ``None`` when it carried no status)."""

    code: int | None
    reason: str


Event = (
    AcceptReceived
    | RequestReceived
    | MalformedRequestReceived
    | RendezvousRequested
    | ResponseReceived
    | TokenRenewalReceived
    | ProtocolViolation
    | ChannelClosed
)


class _State(enum.Enum):
    IDLE = "idle"  # between messages, a control message is expected
    TEXT = "text"  # inside a fragmented text message
    BODY_DUE = "body_due"  # a body message must start with the next data frame
    BODY = "body"  # inside a fragmented body message
    SKIP = "skip"  # inside a stray binary message that is being ignored
    CLOSED = "closed"


# What a body message that is due belongs to: a command, or a malformed request being refused.
_Pending = RequestCommand | ResponseCommand | MalformedRequestError


class _Channel(abc.ABC):
    """Frame reassembly, body pairing and the violation budget shared by both protocol sides.

    ``clock`` (monotonic seconds) only times the violation budget's window.
    """

    def __init__(self, limits: ChannelLimits, clock: Callable[[], float]) -> None:
        self._limits = limits
        self._clock = clock
        self._state = _State.IDLE
        self._buffer = bytearray()
        self._pending: _Pending | None = None
        self._just_sent_bodyless = False
        # Times of recent tolerated violations; never longer than max_violations + 1.
        self._violations: collections.deque[float] = collections.deque()

    @property
    def closed(self) -> bool:
        """Whether a close frame or a fatal violation has ended this channel."""
        return self._state is _State.CLOSED

    def receive_message(self, data: str | bytes) -> list[Event]:
        """Feed one complete message (``str`` = text, ``bytes`` = binary)."""
        if isinstance(data, str):
            events = self._data_frame(Opcode.TEXT, data.encode("utf-8", "surrogatepass"), True)
        else:
            events = self._data_frame(Opcode.BINARY, data, True)
        return self._tally(events)

    def receive_frame(self, opcode: Opcode, payload: bytes, *, fin: bool = True) -> list[Event]:
        """Feed one WebSocket frame as it came off the wire (payload already unmasked)."""
        state = self._state
        if (
            opcode is Opcode.TEXT
            and fin
            and state is _State.IDLE
            and len(payload) <= self._limits.max_message_size
        ):
            # The common case, one whole control message in one frame: what _data_frame and
            # _append do for it, without their steps (the buffer is empty between messages).
            return self._tally(self._text_message(bytes(payload)))
        if state is _State.CLOSED:
            return []
        if opcode in (Opcode.PING, Opcode.PONG):
            return []  # keepalive is the WebSocket layer's business (section 3.3)
        if opcode is Opcode.CLOSE:
            return [self.receive_close(*_close_payload(payload))]
        return self._tally(self._data_frame(opcode, payload, fin))

    def receive_close(self, code: int | None, reason: str = "") -> ChannelClosed:
        """Feed the peer's close; any half-received message is discarded."""
        self._state = _State.CLOSED
        self._buffer.clear()
        self._pending = None
        return ChannelClosed(code=code, reason=reason)

    # -- internals --------------------------------------------------------------------------

    def receive_too_large(self) -> list[Event]:
        """Report that the WebSocket layer refused the next data message as too large.

        For libraries that enforce a message size bound themselves without handing over the
        bytes (aiohttp's ``max_msg_size``, RFC 6455 close code 1009). The outcome is the same as
        if the core had counted the bytes: a fatal ``message_too_large`` violation, carrying the
        request id when a request body was due or in progress.
        """
        if self._state is _State.CLOSED:
            return []
        if self._state in (_State.BODY_DUE, _State.BODY):
            return self._body_too_large()
        limit = self._limits.max_message_size
        return self._fatal(MessageTooLargeError(f"message larger than {limit} bytes"))

    def _tally(self, events: list[Event]) -> list[Event]:
        """Charge tolerated defects to the budget; past it, append a fatal violation."""
        for event in events:
            if isinstance(event, MalformedRequestReceived) or (
                isinstance(event, ProtocolViolation)
                and not event.fatal
                and not isinstance(event.error, UnknownCommandError)
            ):
                now = self._clock()
                recent = self._violations
                recent.append(now)
                while now - recent[0] > self._limits.violation_window:
                    recent.popleft()
                if len(recent) > self._limits.max_violations:
                    limit, window = self._limits.max_violations, self._limits.violation_window
                    error = TooManyViolationsError(
                        f"more than {limit} protocol violations within {window:g} s"
                    )
                    return events + self._fatal(error)
        return events

    def _fatal(self, error: ProtocolError, *, request_id: str | None = None) -> list[Event]:
        self._state = _State.CLOSED
        self._buffer.clear()
        self._pending = None
        return [ProtocolViolation(error=error, fatal=True, request_id=request_id)]

    def _body_too_large(self) -> list[Event]:
        # Fatal because the rest of the body is never read; the id lets the listener answer 413
        # on the rendezvous socket before it closes it (catalogue item 150).
        pending = self._pending
        request_id: str | None = None
        if isinstance(pending, RequestCommand):
            request_id = pending.id
        elif isinstance(pending, MalformedRequestError):
            request_id = pending.request_id
        limit = self._limits.max_body_size
        error = MessageTooLargeError(f"body larger than {limit} bytes")
        return self._fatal(error, request_id=request_id)

    def _data_frame(self, opcode: Opcode, payload: bytes, fin: bool) -> list[Event]:
        state = self._state
        if state is _State.CLOSED:
            return []
        starts_message = opcode is not Opcode.CONTINUATION
        if state in (_State.TEXT, _State.BODY, _State.SKIP) and starts_message:
            return self._fatal(UnexpectedFrameError("new data frame inside a fragmented message"))
        if state in (_State.IDLE, _State.BODY_DUE) and not starts_message:
            return self._fatal(UnexpectedFrameError("continuation frame outside a message"))
        if state is _State.IDLE:
            if opcode is Opcode.TEXT:
                return self._append(payload, fin, _State.TEXT, self._limits.max_message_size)
            return self._stray_binary(payload, fin)
        if state is _State.BODY_DUE:
            if opcode is not Opcode.BINARY:
                return self._fatal(UnexpectedFrameError("expected a binary body message"))
            return self._append(payload, fin, _State.BODY, self._limits.max_body_size)
        if state is _State.TEXT:
            return self._append(payload, fin, _State.TEXT, self._limits.max_message_size)
        if state is _State.BODY:
            return self._append(payload, fin, _State.BODY, self._limits.max_body_size)
        # _State.SKIP: discard until the stray message ends.
        if fin:
            self._state = _State.IDLE
        return []

    def _append(self, payload: bytes, fin: bool, state: _State, limit: int) -> list[Event]:
        if len(self._buffer) + len(payload) > limit:
            if state is _State.BODY:
                return self._body_too_large()
            return self._fatal(MessageTooLargeError(f"control message larger than {limit} bytes"))
        if fin and not self._buffer:
            data = bytes(payload)  # a message in one frame: no copy through the buffer
        else:
            self._buffer += payload
            if not fin:
                self._state = state
                return []
            data = bytes(self._buffer)
            self._buffer.clear()
        self._state = _State.IDLE
        if state is _State.TEXT:
            return self._text_message(data)
        pending = self._pending
        self._pending = None
        assert pending is not None  # BODY is only entered with a pending command
        return self._finish(pending, data)

    def _text_message(self, data: bytes) -> list[Event]:
        self._just_sent_bodyless = False
        try:
            command = parse_command(data, max_size=self._limits.max_message_size)
        except (UnknownCommandError, MalformedCommandError) as error:
            # A defective accept or rendezvous-only request is never followed by a body, so the
            # framing stays in step: report it (charged to the budget) and carry on.
            return [ProtocolViolation(error=error, fatal=False)]
        except MalformedRequestError as error:
            return self._malformed_request(error)
        except ProtocolError as error:
            return self._fatal(error)
        return self._command(command)

    def _await_body(self, pending: _Pending) -> list[Event]:
        if pending.body:
            self._pending = pending
            self._state = _State.BODY_DUE
            return []
        return self._finish(pending, None)

    def _finish(self, pending: _Pending, body: bytes | None) -> list[Event]:
        if isinstance(pending, MalformedRequestError):
            # The body was read only to stay in step with the framing (section 5.4); a request
            # that is refused never hands its body on.
            return [MalformedRequestReceived(request_id=pending.request_id, error=pending)]
        return self._complete(pending, body)

    def _stray_binary(self, payload: bytes, fin: bool) -> list[Event]:
        events: list[Event] = []
        if not (self._just_sent_bodyless and fin and not payload):
            error = UnexpectedFrameError("binary message without a preceding command")
            events.append(ProtocolViolation(error=error, fatal=False))
        self._just_sent_bodyless = False
        if not fin:
            self._state = _State.SKIP
        return events

    @abc.abstractmethod
    def _command(self, command: Command) -> list[Event]:
        """React to a parsed control message."""

    @abc.abstractmethod
    def _malformed_request(self, error: MalformedRequestError) -> list[Event]:
        """React to a ``request`` that is malformed but addressable."""

    @abc.abstractmethod
    def _complete(
        self, command: RequestCommand | ResponseCommand, body: bytes | None
    ) -> list[Event]:
        """React to a request/response whose body (if any) has fully arrived."""


class ListenerChannel(_Channel):
    """One socket as the LISTENER sees it: a control channel or a rendezvous socket.

    ``check_address(address, command_id)`` validates every rendezvous address before it is
    reported (normally :meth:`gateway.hybridconnection.addresses.RendezvousPolicy.check`); it
    raises :class:`BadRendezvousAddressError` for an address the listener must not dial
    (catalogue item 24). An ``accept`` or rendezvous-only ``request`` with such an address is
    reported as a non-fatal violation and never as an event; a full ``request`` (which arrived
    whole on this channel) as :class:`MalformedRequestReceived` whose ``error.field_error`` is the
    address error, so the listener can answer it on the channel without dialling.
    ``clock`` times the violation budget (``ChannelLimits.max_violations``).
    """

    def __init__(
        self,
        kind: SocketKind,
        *,
        check_address: Callable[[str, str | None], object],
        limits: ChannelLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(limits or ChannelLimits.for_socket(kind), clock)
        self.kind = kind
        self._check_address = check_address

    def _command(self, command: Command) -> list[Event]:
        on_control = self.kind is SocketKind.CONTROL
        if isinstance(command, RequestCommand):
            if on_control and command.address is None:
                # The address is the only way to deliver a large response (section 5.3); without
                # it the request is still answerable with a small refusal on this channel.
                missing = MissingFieldError("request: missing required field 'address'")
                return self._malformed_request(
                    MalformedRequestError(missing, request_id=command.id, body=command.body)
                )
            if not on_control:
                # Section 3.2: on a rendezvous socket the response goes back on that socket;
                # never expose an address the service did not need to send.
                command = dataclasses.replace(command, address=None)
            if not command.body:
                return self._complete(command, None)
            return self._await_body(command)
        if isinstance(command, AcceptCommand) and on_control:
            return self._checked(command.address, command.id, [AcceptReceived(command)])
        if isinstance(command, RendezvousRequestCommand) and on_control:
            return self._checked(command.address, command.id, [RendezvousRequested(command)])
        name = type(command).__name__
        error = UnexpectedCommandError(
            f"{name} is not valid from the relay on a {self.kind.value} socket"
        )
        return [ProtocolViolation(error=error, fatal=False)]

    def _malformed_request(self, error: MalformedRequestError) -> list[Event]:
        # Read (and drop) its body first, if it has one; then it is answered 400 (section 5.4).
        return self._await_body(error)

    def _complete(
        self, command: RequestCommand | ResponseCommand, body: bytes | None
    ) -> list[Event]:
        assert isinstance(command, RequestCommand)
        event = RequestReceived(command=command, body=body)
        if command.address is None:
            return [event]
        try:
            self._check_address(command.address, command.id)
        except ProtocolError as error:
            # The request itself came over the authenticated control channel and is small: it
            # is answered right here (502, see MalformedRequestReceived) instead of being left
            # to the relay's 504. Only its address is never used.
            refused = MalformedRequestError(error, request_id=command.id, body=False)
            return [MalformedRequestReceived(request_id=command.id, error=refused)]
        return [event]

    def _checked(self, address: str, command_id: str | None, events: list[Event]) -> list[Event]:
        try:
            self._check_address(address, command_id)
        except ProtocolError as error:
            return [ProtocolViolation(error=error, fatal=False)]
        return events


class RelayChannel(_Channel):
    """One socket as the RELAY sees it (used by the local emulator and by tests).

    Reports ``response`` (+ body) and ``renewToken``. A zero-length binary message right after a
    ``"body": false`` response is swallowed silently: hyco-https sends one (section 5.3).
    """

    def __init__(
        self,
        kind: SocketKind,
        *,
        limits: ChannelLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(limits or ChannelLimits.for_socket(kind), clock)
        self.kind = kind

    def _command(self, command: Command) -> list[Event]:
        if isinstance(command, ResponseCommand):
            return self._await_body(command)
        if isinstance(command, RenewTokenCommand) and self.kind is SocketKind.CONTROL:
            return [TokenRenewalReceived(command)]
        name = type(command).__name__
        error = UnexpectedCommandError(
            f"{name} is not valid from a listener on a {self.kind.value} socket"
        )
        return [ProtocolViolation(error=error, fatal=False)]

    def _malformed_request(self, error: MalformedRequestError) -> list[Event]:
        # A listener never sends `request`; treated like a well-formed one (unexpected, ignored).
        unexpected = UnexpectedCommandError(
            f"RequestCommand is not valid from a listener on a {self.kind.value} socket"
        )
        return [ProtocolViolation(error=unexpected, fatal=False)]

    def _complete(
        self, command: RequestCommand | ResponseCommand, body: bytes | None
    ) -> list[Event]:
        assert isinstance(command, ResponseCommand)
        if body is None:
            self._just_sent_bodyless = True
        return [ResponseReceived(command=command, body=body)]


def _close_payload(payload: bytes) -> tuple[int | None, str]:
    # RFC 6455 section 5.5.1: optional 2-byte status code, then a UTF-8 reason.
    if len(payload) < 2:
        return None, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")


# --- outgoing helpers ----------------------------------------------------------------------


class ResponseRoute(enum.Enum):
    """Where a response must travel (section 5.3)."""

    CONTROL = "control"
    RENDEZVOUS = "rendezvous"


def choose_response_route(body_length: int | None, *, arrived_on: SocketKind) -> ResponseRoute:
    """Decide where the response to a request goes.

    A request delivered on a rendezvous socket is answered there. One delivered on the control
    channel is answered there only if its body is known and at most 64 KiB; ``None`` (unknown
    length, streaming) or anything larger goes to the request's rendezvous address.
    """
    if arrived_on is SocketKind.RENDEZVOUS:
        return ResponseRoute.RENDEZVOUS
    if body_length is not None and body_length <= CONTROL_CHANNEL_BODY_LIMIT:
        return ResponseRoute.CONTROL
    return ResponseRoute.RENDEZVOUS


def response_frames(response: ResponseCommand, body: bytes | None) -> list[Frame]:
    """The frames of a complete response: the JSON text, then the body as one binary frame.

    ``response.body`` must agree with ``body`` (``None`` = no body). Send the returned frames as
    one critical section: binary frames carry no request id, so nothing may come between them
    (section 5.4).
    """
    if response.body != (body is not None):
        raise ValueError("response.body must be true exactly when a body is given")
    frames = [Frame(Opcode.TEXT, command_bytes(response))]
    if body is not None:
        frames.append(Frame(Opcode.BINARY, body))
    return frames


def request_frames(request: RequestCommand, body: bytes | None) -> list[Frame]:
    """The frames of a complete request (relay side), same pairing rule as responses."""
    if request.body != (body is not None):
        raise ValueError("request.body must be true exactly when a body is given")
    frames = [Frame(Opcode.TEXT, command_bytes(request))]
    if body is not None:
        frames.append(Frame(Opcode.BINARY, body))
    return frames


class BodyFramer:
    """Frames for one body message sent in pieces, as .NET streams large responses (section 5.3).

    Each :meth:`chunk` yields a non-final frame (binary first, continuation after); :meth:`end`
    yields the final frame, empty if all data went out in chunks.
    """

    def __init__(self) -> None:
        self._started = False
        self._finished = False

    def chunk(self, data: bytes) -> Frame:
        """A non-final frame carrying ``data``."""
        return self._frame(data, fin=False)

    def end(self, data: bytes = b"") -> Frame:
        """The final frame of the body message."""
        return self._frame(data, fin=True)

    def _frame(self, data: bytes, *, fin: bool) -> Frame:
        if self._finished:
            raise RuntimeError("the body message is already complete")
        opcode = Opcode.CONTINUATION if self._started else Opcode.BINARY
        self._started = True
        self._finished = fin
        return Frame(opcode, data, fin)
