"""The seam between the relay listener and the rest of the agent.

The listener (``gateway.relay.listener``) speaks the Hybrid Connections protocol; everything it
hands over or expects back is defined here as plain data and small ``typing.Protocol``
interfaces, so the request pipeline, the stream splicer and the credential source can be built and
tested without relay sockets.

* :class:`RequestHandler`: one relayed HTTP request in, one response out.
* :class:`StreamHandler`: decides on a relayed WebSocket (``accept``) and then serves it.
* :class:`TokenProvider`: mints the listener's SAS token.
* :class:`RefusalSink`: told of every request or stream the listener refused or answered itself,
  so it reaches the decision log like the handler's own decisions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "AcceptInfo",
    "AcceptStream",
    "RefusalSink",
    "RejectStream",
    "RelayRefusal",
    "RelayedRequest",
    "RelayedResponse",
    "RequestHandler",
    "StreamDecision",
    "StreamHandler",
    "StreamSocket",
    "TokenProvider",
]

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RelayedRequest:
    """An HTTP request the SaaS sent through the relay (protocol notes section 3.2).

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


@dataclass(frozen=True)
class RelayedResponse:
    """The answer to a :class:`RelayedRequest`.

    ``body`` is either the whole body as ``bytes`` or an async iterator of chunks for large or
    streamed bodies (always sent over a rendezvous socket, section 5.3). Bytes bodies up to 64 KiB
    go back on the control channel. Connection-level headers (``Connection``, ``Keep-Alive``,
    ``Transfer-Encoding``, ``TE``, ``Trailer``, ``Upgrade``, ``Content-Length``) are dropped on the
    way out; repeated names are joined with ``", "``, except ``Set-Cookie``, of which only the
    first is sent: the relay's header object has one value per name and joining cookies corrupts
    them (protocol notes section 3.2; a known protocol limitation).
    """

    status: int
    reason: str = ""
    headers: Headers = ()
    body: bytes | AsyncIterator[bytes] = b""


class RequestHandler(Protocol):
    """Turns a relayed request into a response. May raise; the listener then answers 500."""

    def __call__(self, request: RelayedRequest, /) -> Awaitable[RelayedResponse]:
        """Handle ``request``; must finish within the listener's request deadline."""
        ...


@dataclass(frozen=True)
class AcceptInfo:
    """A WebSocket sender waiting for this gateway (``accept``, protocol notes section 4).

    ``target`` is the path suffix after the Hybrid Connection path plus the sender's own query
    parameters (every ``sb-hc-*`` parameter removed), e.g. ``/ldap?x=1``; ``/`` when there is
    none. ``connect_headers`` are the sender's handshake headers. The rendezvous address itself is
    never exposed: it is a single-use bearer credential.
    """

    stream_id: str
    target: str
    connect_headers: Headers
    remote: tuple[str, int] | None = None


@dataclass(frozen=True)
class AcceptStream:
    """Take the stream; ``subprotocol`` (one the sender offered) is returned to the sender."""

    subprotocol: str | None = None


@dataclass(frozen=True)
class RejectStream:
    """Refuse the stream; the sender's handshake fails with ``status`` and ``description``."""

    status: int
    description: str = field(default="Rejected")

    def __post_init__(self) -> None:
        """The relay passes the code on as an HTTP status; keep it a real one."""
        if not 400 <= self.status <= 599:
            raise ValueError("reject status must be 400-599")


StreamDecision = AcceptStream | RejectStream


class StreamSocket(Protocol):
    """The accepted WebSocket as the stream handler sees it (relay side of the splice)."""

    async def receive(self) -> str | bytes | None:
        """The next data message (``str`` text, ``bytes`` binary), or ``None`` once closed."""
        ...

    async def send(self, data: str | bytes) -> None:
        """Send one text (``str``) or binary (``bytes``) message."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket (idempotent)."""
        ...


class StreamHandler(Protocol):
    """Decides on relayed WebSocket streams and serves the accepted ones."""

    async def decide(self, info: AcceptInfo) -> StreamDecision:
        """Accept or reject; must be quick (the rendezvous address expires after ~30 s)."""
        ...

    async def serve(self, info: AcceptInfo, socket: StreamSocket) -> None:
        """Run the accepted stream until done; the listener closes the socket afterwards."""
        ...


class TokenProvider(Protocol):
    """Mints a listener token: ``(token, expires_at)`` with ``expires_at`` in Unix seconds."""

    def __call__(self) -> Awaitable[tuple[str, float]]:
        """Return a fresh ``SharedAccessSignature ...`` token and its expiry."""
        ...


@dataclass(frozen=True)
class RelayRefusal:
    """A request or stream the listener answered or dropped itself, without the handler's say.

    ``kind`` is ``http`` or ``stream``; ``interaction_id`` the relay's id for it (when sound);
    ``status`` what the sender was answered, ``0`` when nothing could be answered (an address
    that failed the check, a refusal past its bound); ``reason`` a stable code
    (``malformed_request``, ``bad_rendezvous_address``, ``gateway_busy``, ``draining``,
    ``overloaded`` (a refusal past its bound), ``bad_target``, ``handler_timeout``,
    ``handler_error``, ``invalid_response``,
    ``body_too_large``, ``malformed_command``); ``method`` the request's method when it was sound.
    """

    kind: str
    interaction_id: str | None
    status: int
    reason: str
    method: str | None = None


class RefusalSink(Protocol):
    """Receives :class:`RelayRefusal` records; must be quick and must not raise."""

    def __call__(self, refusal: RelayRefusal, /) -> None:
        """Record ``refusal``."""
        ...
