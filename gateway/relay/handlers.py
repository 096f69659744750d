"""The seam between the relay listener and the rest of the agent.

The listener (``gateway.relay.listener``) speaks the Hybrid Connections protocol; everything it
hands over or expects back is defined here as plain data and small ``typing.Protocol``
interfaces, so the request pipeline, the stream splicer and the credential source can be built and
tested without relay sockets.

* :class:`RequestHandler`: one relayed HTTP request in, one response out.
* :class:`StreamHandler`: decides on a relayed WebSocket (``accept``) and then serves it.
* :class:`TokenProvider`: mints the listener's SAS token.
* :class:`RelayedRequest`, :class:`RelayedResponse`, :class:`AcceptInfo`: the plain data the
  protocol core (:mod:`gateway.hybridconnection.connection`) projects requests and streams to;
  re-exported here because they are this seam's vocabulary.
* :class:`RefusalSink`: told of every request or stream the listener refused or answered itself,
  so it reaches the decision log like the handler's own decisions.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.hybridconnection.connection import (
    AcceptInfo,
    RelayedRequest,
    RelayedResponse,
)

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


class RequestHandler(Protocol):
    """Turns a relayed request into a response. May raise; the listener then answers 500."""

    def __call__(self, request: RelayedRequest, /) -> Awaitable[RelayedResponse]:
        """Handle ``request``; must finish within the listener's request deadline."""
        ...


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
