"""The listener's side of one relay socket as a sans-IO connection object (like h11).

:class:`ListenerConnection` is fed the WebSocket frames of one relay socket (a control channel
or a rendezvous socket) and returns protocol events; it turns what the application answers into
the frames to send. It never touches a socket, a clock it was not given, or an event loop: the
socket adapter in :mod:`gateway.relay` owns the WebSocket library, the tasks and the timeouts,
and every protocol decision is made here, once, for the listener and the local relay emulator.

Decisions made here (protocol notes ``hybrid-connections-protocol.md``, "section N"):

* Reading: frame reassembly, body pairing, bounds and the violation budget (delegated to
  :class:`gateway.hybridconnection.framing.ListenerChannel`).
* Request projection (section 3.2): ``requestTarget`` carries the Hybrid Connection's path; the
  application sees the rest (``/{path}/orders?x`` -> ``/orders?x``). A target outside the HC is
  refused (:class:`TargetOutsideError`).
* Accept projection (section 4): the path suffix after ``/$hc/{path}`` and the sender's own query
  (every ``sb-hc-`` parameter with an ``=`` removed, section 5.2) become the stream's target; the
  rendezvous address itself is never exposed (it is a bearer credential).
* Response folding (sections 3.2 and 9): connection-level headers are dropped, repeated names are
  joined with ``", "`` except ``Set-Cookie``, of which only the first is kept (one value per name
  fits the JSON object; joining cookies corrupts them). Header names must be tokens and values
  free of control characters, or the response is replaced by a 500.
* Route (section 5.3): a complete body of at most 64 KiB answers on the control channel; larger
  or streamed bodies go over the request's rendezvous address; a request that arrived on a
  rendezvous socket is answered there.
* Framing of outgoing messages (section 5.4): the JSON text message, then exactly one binary
  message for the body; a streamed body is one fragmented binary message in pieces of at most
  :data:`STREAM_FRAME_LIMIT` bytes.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from operator import itemgetter
from typing import Final
from urllib.parse import unquote_plus, urlsplit

from gateway.hybridconnection.addresses import hc_path
from gateway.hybridconnection.framing import (
    BodyFramer,
    ChannelLimits,
    Event,
    Frame,
    ListenerChannel,
    Opcode,
    ResponseRoute,
    SocketKind,
    choose_response_route,
)
from gateway.hybridconnection.messages import (
    FIELD_BYTES,
    MAX_CONTROL_MESSAGE_SIZE,
    MAX_FIELD_LENGTH,
    MAX_HEADER_METADATA,
    MAX_HEADERS,
    TOKEN_BYTES,
    AcceptCommand,
    RenewTokenCommand,
    RequestCommand,
    ResponseCommand,
    command_bytes,
    header_metadata_size,
    response_bytes,
)
from gateway.hybridconnection.records import slot_setters

__all__ = [
    "CONNECTION_HEADERS",
    "STREAM_FRAME_LIMIT",
    "AcceptInfo",
    "Headers",
    "ListenerConnection",
    "PreparedResponse",
    "RelayedRequest",
    "RelayedResponse",
    "StreamedBody",
    "TargetOutsideError",
    "fold_headers",
    "prepare_response",
    "project_accept",
    "project_request",
    "renew_token_frames",
    "split_query",
]

Headers = tuple[tuple[str, str], ...]

# Section 3.2 / 5.2 and RFC 9110 section 7.6.1: connection-level headers never cross the relay,
# in either direction (``Close`` is the pseudo-header HTTP.sys strips; ``Host`` belongs to the
# hop the relay terminates; ``Proxy-Connection`` is the pre-standard spelling of Connection).
CONNECTION_HEADERS: Final = frozenset(
    {
        "close",
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# One frame of a streamed body carries at most this much; the peer reassembles (RFC 6455 5.4).
STREAM_FRAME_LIMIT: Final = 1024 * 1024
# A reason phrase that travels as statusDescription (section 3.2); bounded like the .NET SDK's.
MAX_REASON: Final = 120

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NAME, _VALUE = itemgetter(0), itemgetter(1)
_CTL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True, init=False)
class RelayedRequest:
    """An HTTP request the SaaS sent through the relay (section 3.2).

    ``target`` is the request target with the Hybrid Connection's ``/{path}`` prefix removed
    (``/orders/17?expand=true``); ``raw_target`` is what the relay sent. ``headers`` keeps the
    relay's order; the relay has already joined repeated headers with ``", "`` and removed the
    connection-level ones. ``body`` is complete (the listener enforces the configured maximum
    before calling the handler) and empty when the request had none. ``remote`` is the sender's
    address as the relay saw it, when it said.
    """

    request_id: str
    method: str
    target: str
    raw_target: str
    headers: Headers
    body: bytes = b""
    remote: tuple[str, int] | None = None

    def __init__(
        self,
        request_id: str,
        method: str,
        target: str,
        raw_target: str,
        headers: Headers,
        body: bytes = b"",
        remote: tuple[str, int] | None = None,
    ) -> None:
        # Made per relayed request: each slot set by its own setter (see records.py).
        s_id, s_method, s_target, s_raw, s_headers, s_body, s_remote = _REQUEST_SLOTS
        s_id(self, request_id)
        s_method(self, method)
        s_target(self, target)
        s_raw(self, raw_target)
        s_headers(self, headers)
        s_body(self, body)
        s_remote(self, remote)


_REQUEST_SLOTS: Final = slot_setters(
    RelayedRequest, "request_id", "method", "target", "raw_target", "headers", "body", "remote"
)


@dataclass(frozen=True, slots=True, init=False)
class RelayedResponse:
    """The answer to a :class:`RelayedRequest`.

    ``body`` is either the whole body as ``bytes`` or an async iterator of chunks for large or
    streamed bodies (always sent over a rendezvous socket, section 5.3). Bytes bodies up to 64 KiB
    go back on the control channel. Connection-level headers (:data:`CONNECTION_HEADERS`) are
    dropped on the way out; repeated names are joined with ``", "``, except ``Set-Cookie``, of
    which only the first is sent: the relay's header object has one value per name and joining
    cookies corrupts them (section 3.2; a known protocol limitation).
    """

    status: int
    reason: str = ""
    headers: Headers = ()
    body: bytes | AsyncIterator[bytes] = b""

    def __init__(
        self,
        status: int,
        reason: str = "",
        headers: Headers = (),
        body: bytes | AsyncIterator[bytes] = b"",
    ) -> None:
        # Made per relayed request: each slot set by its own setter (see records.py).
        set_status, set_reason, set_headers, set_body = _RESPONSE_SLOTS
        set_status(self, status)
        set_reason(self, reason)
        set_headers(self, headers)
        set_body(self, body)


_RESPONSE_SLOTS: Final = slot_setters(RelayedResponse, "status", "reason", "headers", "body")


@dataclass(frozen=True)
class AcceptInfo:
    """A WebSocket sender waiting for this gateway (``accept``, section 4).

    ``target`` is the path suffix after the Hybrid Connection path plus the sender's own query
    parameters (every ``sb-hc-*`` parameter removed), e.g. ``/ldap?x=1``; ``/`` when there is
    none. ``connect_headers`` are the sender's handshake headers. The rendezvous address itself is
    never exposed: it is a single-use bearer credential.
    """

    stream_id: str
    target: str
    connect_headers: Headers
    remote: tuple[str, int] | None = None


class TargetOutsideError(ValueError):
    """A ``requestTarget`` that does not lie under this Hybrid Connection's path."""


# --- header and query rules ------------------------------------------------------------------


def split_query(raw_query: str, *, also_read: Iterable[str] = ()) -> tuple[dict[str, str], str]:
    """Split a raw query into the service's parameters and the application's query.

    Section 5.2: every parameter whose key (decoded) starts with ``sb-hc-`` and has an ``=`` is
    the service's and is removed; everything else (``?&&&``, ``a=1&a=2``, a bare ``sb-hc-x``)
    passes byte for byte, except that a query left with nothing but separators after a removal
    becomes empty. Keys named in ``also_read`` are read into the service dict too but kept in
    the application's query. The first occurrence of a service key wins.
    """
    service: dict[str, str] = {}
    kept: list[str] = []
    removed = False
    extra = frozenset(also_read)
    for piece in raw_query.split("&") if raw_query else ():
        key, eq, value = piece.partition("=")
        if eq:
            decoded = unquote_plus(key)
            if decoded.lower().startswith("sb-hc-"):
                service.setdefault(decoded, unquote_plus(value))
                removed = True
                continue
            if decoded in extra:
                service.setdefault(decoded, unquote_plus(value))
        kept.append(piece)
    query = "&".join(kept)
    if removed and not query.strip("&"):
        query = ""
    return service, query


def fold_headers(
    headers: Iterable[tuple[str, str]],
    *,
    drop: frozenset[str] = CONNECTION_HEADERS,
    first_only: frozenset[str] = frozenset({"set-cookie"}),
    validate: bool = True,
) -> dict[str, str]:
    """Fold header pairs into the relay's one-value-per-name JSON object (section 3.2).

    Names in ``drop`` (lowercase) are left out; a repeated name is joined with ``", "`` under the
    spelling of its first occurrence, except names in ``first_only``, of which the first value is
    kept. With ``validate``, a name that is not an RFC 9110 token or a value with a control
    character raises ``ValueError``: these strings end up on an HTTP/1.1 wire line.
    """
    # One or two headers are checked faster one by one.
    if validate and type(headers) is tuple and len(headers) > 2 and _pairs_fit(headers):
        validate = False  # every pair passes the test below
    result: dict[str, str] = {}
    spelled: dict[str, str] = {}
    for name, value in headers:
        if validate and (not _TOKEN.fullmatch(name) or _CTL.search(value)):
            raise ValueError("header is not valid HTTP")
        key = name.lower()
        if key in drop:
            continue
        first = spelled.get(key)
        if first is not None:
            if key not in first_only:
                result[first] += ", " + value
            continue
        # An exact str: orjson refuses a subclass (multidict's istr) as a key.
        name = name if type(name) is str else str(name)
        spelled[key] = name
        result[name] = value
    return result


def _pairs_fit(headers: tuple[tuple[str, str], ...]) -> bool:
    """Whether every name is a token and every value free of control characters, for the
    common all-ASCII headers: one ``bytes.translate`` over all names and one over all values
    (deleting the allowed characters leaves the refused ones) instead of two regular
    expressions per header. ``False`` sends :func:`fold_headers` to its header-by-header test,
    which also accepts non-ASCII (obs-text) values and refuses in the order of the headers.
    """
    try:
        names = tuple(map(_NAME, headers))
        joined = "".join(names)
        values = "".join(map(_VALUE, headers))
    except (TypeError, ValueError, IndexError):  # not pairs of strings: see the other test
        return False
    return (
        joined.isascii()
        and values.isascii()
        and "" not in names
        and not joined.encode("ascii").translate(None, TOKEN_BYTES)
        and not values.encode("ascii").translate(None, FIELD_BYTES)
    )


def connection_tokens(value: str | None) -> frozenset[str]:
    """The header names a ``Connection`` header lists (RFC 9110 section 7.6.1), lowercased."""
    if not value:
        return frozenset()
    return frozenset(token.strip().lower() for token in value.split(",") if token.strip())


# --- projections -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _prefix(path: str) -> str:
    # One listener serves one path: checked and lowered once, not per request.
    return "/" + hc_path(path).lower()


def project_request(command: RequestCommand, body: bytes | None, path: str) -> RelayedRequest:
    """The application's view of a relayed request to Hybrid Connection ``path`` (section 3.2).

    Raises :class:`TargetOutsideError` when ``requestTarget`` is not under ``/{path}``
    (compared case-insensitively, on a ``/`` boundary).
    """
    raw = command.request_target
    target_path, sep, query = raw.partition("?")
    prefix = _prefix(path)
    lowered = target_path.lower()
    if lowered == prefix:
        rest = "/"
    elif lowered.startswith(prefix + "/"):
        rest = target_path[len(prefix) :]
    else:
        raise TargetOutsideError("request target is outside this hybrid connection")
    remote = command.remote_endpoint
    return RelayedRequest(
        command.id,
        command.method,
        rest + sep + query,
        raw,
        tuple(command.request_headers.items()),
        body or b"",
        None if remote is None else (remote.address, remote.port),
    )


def project_accept(command: AcceptCommand, path: str) -> AcceptInfo:
    """The application's view of an ``accept`` for Hybrid Connection ``path`` (section 4)."""
    parts = urlsplit(command.address)
    prefix = "/$hc" + _prefix(path)
    suffix = parts.path[len(prefix) :] if parts.path.lower().startswith(prefix) else ""
    _, query = split_query(parts.query)
    target = (suffix or "/") + ("?" + query if query else "")
    remote = command.remote_endpoint
    return AcceptInfo(
        stream_id=command.id,
        target=target,
        connect_headers=tuple(command.connect_headers.items()),
        remote=None if remote is None else (remote.address, remote.port),
    )


# --- outgoing --------------------------------------------------------------------------------


class StreamedBody:
    """The frames of one body sent in pieces: one binary message (section 5.3, RFC 6455 5.4).

    :meth:`chunk` splits ``data`` into frames of at most :data:`STREAM_FRAME_LIMIT` bytes (empty
    data gives none); :meth:`end` gives the final frame.
    """

    def __init__(self, frame_limit: int = STREAM_FRAME_LIMIT) -> None:
        if frame_limit < 1:
            raise ValueError("frame_limit must be positive")
        self._framer = BodyFramer()
        self._limit = frame_limit

    def chunk(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Non-final frames carrying ``data``."""
        view = memoryview(data)
        return [
            self._framer.chunk(bytes(view[start : start + self._limit]))
            for start in range(0, len(view), self._limit)
        ]

    def end(self) -> list[Frame]:
        """The final (empty) frame of the body message."""
        return [self._framer.end()]


class PreparedResponse:
    """A response ready for the wire (made by :func:`prepare_response`; read, never change it).

    ``payload`` is the ``response`` message's JSON text, ``command`` the same message as a
    :class:`ResponseCommand`; ``body`` the complete body (``None`` when there is none or when it
    is ``streamed`` from the application's iterator). ``valid`` is false when the application's
    response could not be sent as it was (bad header) and a bodiless 500 replaced it. ``route``
    is where it must travel, for a request that arrived on ``arrived_on``.

    A plain class, not a dataclass: one is made per relayed request, and the message's parts are
    kept as they are (the JSON is serialised once, the command only built when asked for).
    """

    __slots__ = (
        "_description",
        "_headers",
        "_request_id",
        "_status",
        "body",
        "payload",
        "route",
        "streamed",
        "valid",
    )

    def __init__(
        self,
        request_id: str,
        status_code: int,
        status_description: str | None,
        response_headers: dict[str, str],
        body: bytes | None,
        streamed: bool,
        valid: bool,
        route: ResponseRoute,
    ) -> None:
        self._request_id = request_id
        self._status = status_code
        self._description = status_description
        self._headers = response_headers
        self.body = body
        self.streamed = streamed
        self.valid = valid
        self.route = route
        self.payload = response_bytes(
            request_id, status_code, status_description, response_headers, streamed or bool(body)
        )

    @property
    def command(self) -> ResponseCommand:
        """The ``response`` message (section 3.2) whose text is :attr:`payload`."""
        return ResponseCommand(
            request_id=self._request_id,
            status_code=self._status,
            body=self.streamed or bool(self.body),
            status_description=self._description,
            response_headers=self._headers,
        )

    def frames(self) -> list[Frame]:
        """All frames of a complete response (JSON, then the body): send as one unit."""
        if self.streamed:
            raise ValueError("a streamed response has no complete frame list; use head()")
        text = Frame(Opcode.TEXT, self.payload)
        body = self.body
        # Section 5.4: a body message follows exactly when the JSON says "body": true.
        return [text] if not body else [text, Frame(Opcode.BINARY, body)]

    def head(self) -> list[Frame]:
        """The JSON message of a streamed response; the body follows from :meth:`body_stream`."""
        return [Frame(Opcode.TEXT, self.payload)]

    def body_stream(self) -> StreamedBody:
        """A framer for the streamed body that follows :meth:`head`."""
        return StreamedBody()


# The standard reason phrase of every status that has one (RFC 9110 section 15).
_PHRASES: Final = {int(status): status.phrase for status in HTTPStatus}


def _reason(response: RelayedResponse) -> str | None:
    reason = response.reason
    if reason:
        # A printable phrase has no control character to remove (the common case).
        reason = (reason if reason.isprintable() else _CTL.sub("", reason))[:MAX_REASON]
    return reason or _PHRASES.get(response.status)


def prepare_response(
    request_id: str, response: RelayedResponse, *, arrived_on: SocketKind = SocketKind.CONTROL
) -> PreparedResponse:
    """Turn the application's answer into a ``response`` message and its route (section 5.3).

    The status must be 100-999; a header that is not valid HTTP, or headers the relay would not
    read (more than it carries, or a ``response`` message over its 64 KiB control-message
    size), replace the whole answer with a bodiless ``500`` (``valid`` false) rather than
    sending half of it or a message the relay refuses.
    """
    body = response.body
    streamed = not isinstance(body, bytes)
    try:
        headers = fold_headers(response.headers)
        status = response.status
        if not 100 <= status <= 999:
            raise ValueError("status outside 100-999")
    except ValueError:
        return _invalid(request_id, arrived_on)
    if streamed:
        complete = None
        route = choose_response_route(None, arrived_on=arrived_on)
    else:
        assert isinstance(body, bytes)
        complete = body or None
        route = choose_response_route(len(body), arrived_on=arrived_on)
    prepared = PreparedResponse(
        request_id, status, _reason(response), headers, complete, streamed, True, route
    )
    if len(headers) > MAX_HEADERS or (
        # A value, or the metadata, takes at least as many bytes in the JSON text: a smaller
        # message cannot be over either bound (the common case, no count needed).
        len(prepared.payload) > MAX_FIELD_LENGTH and not _carried(prepared.payload, headers)
    ):
        # Sections 5.2, 5.4 and 7: the relay reads a control message of at most 64 KiB and
        # carries at most 32 KB of header metadata, on either kind of socket. A message it
        # cannot read is not refused for this request alone: the relay drops the socket it
        # came on, with every answer still due on it.
        return _invalid(request_id, arrived_on)
    return prepared


def _carried(payload: bytes, headers: dict[str, str]) -> bool:
    """Whether the relay reads a ``response`` message of these headers (the bounds of
    :func:`gateway.hybridconnection.messages.parse_command`)."""
    return (
        len(payload) <= MAX_CONTROL_MESSAGE_SIZE
        and header_metadata_size(headers) <= MAX_HEADER_METADATA
        and all(len(value) <= MAX_FIELD_LENGTH for value in headers.values())
    )


def _invalid(request_id: str, arrived_on: SocketKind) -> PreparedResponse:
    """The bodiless ``500`` that replaces an answer that cannot be sent as it is."""
    return PreparedResponse(
        request_id,
        500,
        _PHRASES[500],
        {},
        None,
        streamed=False,
        valid=False,
        route=choose_response_route(0, arrived_on=arrived_on),
    )


def renew_token_frames(token: str) -> list[Frame]:
    """The ``renewToken`` message (section 3.2)."""
    return [Frame(Opcode.TEXT, command_bytes(RenewTokenCommand(token=token)))]


# --- the connection object -------------------------------------------------------------------


@dataclass
class ListenerConnection:
    """One relay socket as the listener sees it: frames in, events and frames out.

    ``kind`` is the socket's role; ``path`` the Hybrid Connection name (for the projections);
    ``check_address`` validates rendezvous addresses before they are reported (normally
    :meth:`gateway.hybridconnection.addresses.RendezvousPolicy.check`); ``limits`` bound what is
    read. Feed it with :meth:`receive_frame` (or :meth:`receive_message` for a library that
    reassembles messages), tell it with :meth:`receive_too_large` when the WebSocket library
    refused an oversize message, and take the frames to send from :meth:`respond` /
    :meth:`renew_token`.
    """

    kind: SocketKind
    path: str
    check_address: Callable[[str, str | None], object]
    limits: ChannelLimits | None = None
    clock: Callable[[], float] = time.monotonic
    _channel: ListenerChannel = field(init=False, repr=False)

    def __post_init__(self) -> None:
        hc_path(self.path)  # refuse an empty path at construction
        self._channel = ListenerChannel(
            self.kind, check_address=self.check_address, limits=self.limits, clock=self.clock
        )

    @property
    def closed(self) -> bool:
        """Whether a close frame or a fatal violation has ended this socket's protocol."""
        return self._channel.closed

    @property
    def max_body_size(self) -> int:
        """The largest body this socket accepts (64 KiB on a control channel)."""
        return (self.limits or ChannelLimits.for_socket(self.kind)).max_body_size

    def receive_frame(self, opcode: Opcode, payload: bytes, *, fin: bool = True) -> list[Event]:
        """Feed one WebSocket frame (data or control); returns the protocol events."""
        return self._channel.receive_frame(opcode, payload, fin=fin)

    def receive_message(self, data: str | bytes) -> list[Event]:
        """Feed one complete message (``str`` text, ``bytes`` binary)."""
        return self._channel.receive_message(data)

    def receive_too_large(self) -> list[Event]:
        """The WebSocket library refused the next message as too large; what that means here."""
        return self._channel.receive_too_large()

    def request(self, command: RequestCommand, body: bytes | None) -> RelayedRequest:
        """The application's view of a received request (:func:`project_request`)."""
        return project_request(command, body, self.path)

    def accept(self, command: AcceptCommand) -> AcceptInfo:
        """The application's view of an ``accept`` (:func:`project_accept`)."""
        return project_accept(command, self.path)

    def respond(self, request_id: str, response: RelayedResponse) -> PreparedResponse:
        """Prepare the answer to a request that arrived here (:func:`prepare_response`)."""
        return prepare_response(request_id, response, arrived_on=self.kind)

    def renew_token(self, token: str) -> list[Frame]:
        """The frames of a ``renewToken`` message; only a control channel carries one."""
        if self.kind is not SocketKind.CONTROL:
            raise ValueError("renewToken travels on the control channel only (section 3.2)")
        return renew_token_frames(token)
